"""MicroBatch.to and send_to_device: the same tensors on the device, sent without stalling the host."""

import pytest
import torch

from learner.batching import MicroBatch
from learner.device_transfer import send_to_device


def _batch() -> MicroBatch:
    ids = torch.arange(12).reshape(2, 6)
    return MicroBatch(index=[3, 1], input_ids=ids, attention_mask=torch.ones_like(ids),
                      loss_mask=torch.rand(2, 6), behaviour_logp=-torch.rand(2, 6),
                      pixel_values=torch.rand(8, 4), image_grid_thw=torch.tensor([[1, 2, 4]]),
                      seg_rows=torch.tensor([0, 1]), seg_cols=torch.tensor([5, 4]), seg_turns=[(3, 0), (1, 1)],
                      image_index=torch.tensor([0]), unique_grid=torch.tensor([[1, 2, 4]]),
                      position_ids=torch.arange(36).reshape(3, 2, 6))


FIELDS = ("input_ids", "attention_mask", "loss_mask", "behaviour_logp", "pixel_values", "image_grid_thw",
          "seg_rows", "seg_cols", "image_index", "unique_grid", "position_ids")


def _assert_same(a: MicroBatch, b: MicroBatch, device: str) -> None:
    assert (a.index, a.seg_turns) == (b.index, b.seg_turns)
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert y.device.type == device, name
        assert torch.equal(x.cpu(), y.cpu()), name


def test_to_cpu_keeps_every_field():
    mb = _batch()
    _assert_same(mb, mb.to("cpu"), "cpu")


def test_optional_fields_may_be_absent():
    mb = _batch()
    mb.pixel_values = mb.image_grid_thw = mb.image_index = mb.unique_grid = mb.position_ids = None
    moved = mb.to("cpu")
    assert moved.pixel_values is None and moved.position_ids is None


def test_send_to_device_leaves_cpu_targets_and_device_tensors_alone():
    t = torch.arange(5)
    assert send_to_device(t, "cpu") is t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked transfer needs a CUDA device")
def test_transfer_equals_a_plain_copy_and_does_not_block_the_host():
    from benchmarks.sync_sites import count_sync_sites

    mb = _batch()
    moved = mb.to("cuda")
    torch.cuda.synchronize()
    _assert_same(mb, moved, "cuda")
    on_gpu = send_to_device(torch.arange(5), "cuda")
    assert send_to_device(on_gpu, "cuda") is on_gpu
    count_sync_sites(lambda: mb.to("cuda"), depth=1)  # the counter's first use syncs once itself
    assert count_sync_sites(lambda: mb.to("cuda"), depth=1)["total"] == 0
    # the same tensors copied from ordinary memory: one host sync per tensor
    assert count_sync_sites(lambda: [getattr(mb, f).to("cuda") for f in FIELDS], depth=1)["total"] > 0
