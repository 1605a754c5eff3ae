"""block_diagonal_attention against one attention call per block (what transformers does)."""

import pytest
import torch
import torch.nn.functional as F

from learner.vision_attention import block_diagonal_attention


def per_block(q, k, v, cu, scale):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b > a:
            blk = [t[a:b].transpose(0, 1)[None] for t in (q, k, v)]
            outs.append(F.scaled_dot_product_attention(*blk, scale=scale)[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("lengths", [[16, 16, 16], [16, 9, 16, 0, 4, 9], [7]])
def test_matches_per_block_attention_values_and_gradients(lengths):
    torch.manual_seed(0)
    tokens, heads, dim = sum(lengths), 3, 8
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    base = [torch.randn(tokens, heads, dim, dtype=torch.float64) for _ in range(3)]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    out_a = block_diagonal_attention(*a, cu, 0.3)
    out_b = per_block(*b, cu, 0.3)
    torch.testing.assert_close(out_a, out_b)
    weight = torch.randn_like(out_a)
    (out_a * weight).sum().backward()
    (out_b * weight).sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


def test_tokens_do_not_leak_across_blocks():
    torch.manual_seed(1)
    cu = torch.tensor([0, 5, 10, 13])
    q, k, v = (torch.randn(13, 2, 4) for _ in range(3))
    before = block_diagonal_attention(q, k, v, cu, 0.5)
    v2 = v.clone()
    v2[5:10] += 100.0  # change only the second block's values
    after = block_diagonal_attention(q, k, v2, cu, 0.5)
    torch.testing.assert_close(before[:5], after[:5])
    torch.testing.assert_close(before[10:], after[10:])
    assert not torch.allclose(before[5:10], after[5:10])


@pytest.mark.parametrize("cu", [[0, 5, 12], [1, 6, 10], [0, 7, 5, 10]])
def test_bad_boundaries_are_refused(cu):
    q = torch.zeros(10, 1, 4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        block_diagonal_attention(q, q, q, torch.tensor(cu), 1.0)


def _plans_built(monkeypatch):
    """Count BlockPlan constructions (each reads the bounds to the host once)."""
    from learner import vision_attention

    built = []
    original = vision_attention.BlockPlan.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(vision_attention.BlockPlan, "__init__", counting)
    vision_attention.PLANS.clear()
    return built


def test_bounds_are_read_once_per_cu_seqlens_tensor(monkeypatch):
    built = _plans_built(monkeypatch)
    cu = torch.tensor([0, 4, 10, 14])
    q, k, v = (torch.randn(14, 2, 4) for _ in range(3))
    for _ in range(3):  # as every block of a tower, and the checkpoint recompute, pass the same tensor
        torch.testing.assert_close(block_diagonal_attention(q, k, v, cu, 0.5), per_block(q, k, v, cu, 0.5))
    assert len(built) == 1
    # A detached alias of the same memory is the same bounds.
    block_diagonal_attention(q, k, v, cu.detach(), 0.5)
    assert len(built) == 1


def test_changed_or_new_bounds_get_a_new_plan(monkeypatch):
    built = _plans_built(monkeypatch)
    q, k, v = (torch.randn(14, 2, 4) for _ in range(3))
    cu = torch.tensor([0, 4, 10, 14])
    block_diagonal_attention(q, k, v, cu, 0.5)
    cu[1] = 7  # in place: the cached plan no longer describes these bounds
    torch.testing.assert_close(block_diagonal_attention(q, k, v, cu, 0.5), per_block(q, k, v, cu, 0.5))
    other = torch.tensor([0, 7, 14])
    torch.testing.assert_close(block_diagonal_attention(q, k, v, other, 0.5), per_block(q, k, v, other, 0.5))
    assert len(built) == 3


def test_plan_cache_is_bounded(monkeypatch):
    from learner.vision_attention import PLANS

    _plans_built(monkeypatch)
    q = torch.randn(12, 1, 4)
    tensors = [torch.tensor([0, n, 12]) for n in range(1, 11)]
    for cu in tensors:
        block_diagonal_attention(q, q, q, cu, 1.0)
    assert len(PLANS._entries) == PLANS.SIZE
    assert PLANS._entries[0][0] is tensors[-1]  # most recent first
