"""Real vLLM (CPU build) rollouts with the tiny Qwen-VL policy against real env actors under Ray."""

import asyncio

import numpy as np
import pytest
import torch

from configs import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def setup(ray_local, tiny_qwen25_dir, davis_revos_dir, tmp_path_factory):
    from env.actor import create_env_actors
    from rollout.actor import RolloutRouter, create_rollout_workers

    cfg = load_config(overrides=[
        "rollout.sampling.max_new_tokens=128", "rollout.max_episodes_in_flight=32",
        f"model.cache_dir={tmp_path_factory.mktemp('cache')}",
        "rollout.block_size=32",
        "data.train=[{name: synthetic, format: synthetic, videos: 4, seed: 3, frames_per_video: 16},"
        f" {{name: davis, format: revos, root: '{davis_revos_dir}'}}]",
    ])
    envs = create_env_actors(cfg.env, cfg.data.train, n=2, num_cpus=0.25, cache_dir=str(cfg.model.cache_dir))
    workers = create_rollout_workers(cfg, str(tiny_qwen25_dir), envs, n=1)
    yield cfg, envs, workers[0], RolloutRouter(workers)
    ray_local.get(workers[0].shutdown.remote())


def _samples(ray, env, dataset, n):
    ids = ray.get(env.sample_ids.remote(dataset))[:n]
    return [ray.get(env.sample.remote(i)) for i in ids]


def _check_masks(traj, codec_ids):
    im_end, pad = codec_ids
    traj.check()
    assert traj.prompt_length > 0 and 1 <= traj.num_turns <= 3
    for i, (tok, m) in enumerate(zip(traj.token_ids, traj.loss_mask)):
        if tok == pad:
            assert m == 0, "image tokens must never carry loss"
    for t in traj.turns:
        assert all(lp <= 0.0 for lp in traj.logprobs[t.start:t.end])
        assert any(lp < 0.0 for lp in traj.logprobs[t.start:t.end])
    # every env segment between turns is masked
    for a, b in zip(traj.turns, traj.turns[1:]):
        assert sum(traj.loss_mask[a.end:b.start]) == 0 and b.start > a.end


def _special(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|image_pad|>")


def test_free_sampling_random_policy_ends_malformed(setup, ray_local, tiny_qwen25_dir):
    cfg, envs, worker, router = setup
    samples = _samples(ray_local, envs[0], "synthetic", 2)
    trajs = ray_local.get(worker.generate.remote(samples, 4, 0))
    assert len(trajs) == 8
    ids = _special(tiny_qwen25_dir)
    for t in trajs:
        _check_masks(t, ids)
        assert t.end_reason in ("malformed", "bad_interval", "answer", "max_turns", "context_limit")
    # the group shares its turn-0 prompt: later members hit the prefix cache
    assert max(t.turns[0].num_cached_tokens for t in trajs) > 0


def test_constrained_episodes_cover_every_end_reason_on_synthetic_and_davis(setup, ray_local, tiny_qwen25_dir):
    """Grammar-constrained sampling: every turn parses, so episodes run 1-3 turns and end by
    answering, by an empty interval (e < s) or by the turn budget. The random policy picks
    select/answer and the indices by chance, so rounds repeat (new seeds) until all outcomes have
    been seen; a second env group with a 2-turn budget makes the budget ending common."""
    from env.actor import create_env_actors

    cfg, envs, worker, router = setup
    short_env = create_env_actors(cfg.env.model_copy(update={"max_turns": 2}), cfg.data.train, n=1,
                                  num_cpus=0.25, cache_dir=str(cfg.model.cache_dir))
    samples = _samples(ray_local, envs[0], "synthetic", 3) + _samples(ray_local, envs[0], "davis", 3)
    ids = _special(tiny_qwen25_dir)
    seg_id = _seg_id(tiny_qwen25_dir)
    trajs, reasons, turns = [], set(), set()
    ray_local.get(worker.set_constrain_format.remote(True))
    try:
        for round_ in range(8):
            batch = asyncio.run(router.generate(samples, 4, 10 + round_))
            batch += asyncio.run(router.generate(samples[:2], 4, 10 + round_, False, short_env))
            trajs += batch
            reasons |= {t.end_reason for t in batch}
            turns |= {t.num_turns for t in batch}
            if {"answer", "bad_interval", "max_turns"} <= reasons and {1, 2, 3} <= turns:
                break
    finally:
        ray_local.get(worker.set_constrain_format.remote(False))
    for t in trajs:
        _check_masks(t, ids)
        for tt in t.turns:
            assert tt.record.error is None or tt.record.error.code == "bad_interval"
            assert tt.seg_position >= 0 and t.token_ids[tt.seg_position] == seg_id
            assert tt.num_seg_tokens == 1
        if t.end_reason == "max_turns":
            assert all(x.record.action.kind == "select" for x in t.turns)
        if t.end_reason == "answer":
            assert t.turns[-1].record.action.kind == "answer"
    assert {"answer", "bad_interval", "max_turns"} <= reasons, reasons
    assert {1, 2, 3} <= turns, turns
    assert {t.sample.dataset for t in trajs} == {"synthetic", "davis"}
    multi = [t for t in trajs if t.num_turns >= 2]
    # turn >= 2 re-uses the history from the prefix cache
    hit = sum(x.num_cached_tokens for t in multi for x in t.turns[1:])
    total = sum(x.prompt_tokens for t in multi for x in t.turns[1:])
    assert hit / total > 0.5


def _seg_id(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("[SEG]")


def test_engine_image_tokens_equal_hf_processor(setup, ray_local, tiny_qwen25_dir):
    from transformers import AutoProcessor

    from rollout.mm_inputs import build_mm_inputs

    cfg, envs, worker, router = setup
    ray_local.get(worker.set_constrain_format.remote(True))
    try:
        trajs = ray_local.get(worker.generate.remote(_samples(ray_local, envs[0], "davis", 1), 4, 2))
    finally:
        ray_local.get(worker.set_constrain_format.remote(False))
    proc = AutoProcessor.from_pretrained(tiny_qwen25_dir)
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    checked = 0
    for t in trajs:
        images = ray_local.get(envs[1].frames_for.remote(t.frames))
        mm = build_mm_inputs(proc.image_processor, images, t.token_ids, pad)
        assert mm["image_grid_thw"].shape[0] == len(t.frames)
        checked += len(t.frames)
    assert checked >= 4 * (cfg.env.initial_low_res_frames + cfg.env.initial_high_res_frames)


def _hf_logprobs(model, ids, mm):
    mm = dict(mm)
    if "mm_token_type_ids" in mm:
        mm["mm_token_type_ids"] = torch.tensor(mm["mm_token_type_ids"], dtype=torch.int32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **mm).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_weight_update_checksum(setup, ray_local, tiny_qwen25_dir, tmp_path):
    """After an update the engine scores fixed sequences as the learner's new weights do.

    Both text-only and image sequences must agree to float precision (the learner passes the
    per-token modality so its multimodal RoPE matches the engine's)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rollout.mm_inputs import build_mm_inputs
    from rollout.weight_transport import is_policy_lm_weight, publish, write_buckets

    cfg, envs, worker, router = setup
    proc = AutoProcessor.from_pretrained(tiny_qwen25_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_dir).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "the red one"},
                                         {"type": "image"}]},
            {"role": "assistant", "content": '<think> Step 1: a. </think><answer><VTG>{"start": 1}</VTG></answer>'}]
    with_images = proc.tokenizer.encode(proc.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
    text_only = proc.tokenizer.encode("<|im_start|>user\nthe shape that leaves first<|im_end|>\n"
                                      "<|im_start|>assistant\n<think> Step 1: a. </think>", add_special_tokens=False)

    img_ids, img_before = ray_local.get(worker.score_sequence.remote(with_images, images))
    _, txt_before = ray_local.get(worker.score_sequence.remote(text_only, []))
    manifest = write_buckets(((n, p) for n, p in model.state_dict().items() if is_policy_lm_weight(n)),
                             tmp_path, version=7, bucket_bytes=256 * 1024)
    assert len(manifest["files"]) > 1  # really bucketed
    update = publish(tmp_path, manifest, ray_local.get_runtime_context().get_node_id())
    info = ray_local.get(worker.update_weights.remote(update, 7))
    assert info["version"] == 7 and info["tensors"] == sum(f["tensors"] for f in manifest["files"])
    _, txt_after = ray_local.get(worker.score_sequence.remote(text_only, []))
    ids, img_after = ray_local.get(worker.score_sequence.remote(with_images, images))
    assert ids == img_ids

    ref_txt = _hf_logprobs(model, text_only, {})
    assert torch.max(torch.abs(torch.tensor(txt_after[1:]) - ref_txt)).item() < 1e-4
    assert torch.max(torch.abs(torch.tensor(txt_before[1:]) - ref_txt)).item() > 1e-2

    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ref_img = _hf_logprobs(model, ids, build_mm_inputs(proc.image_processor, images, ids, pad))
    gap_after = torch.max(torch.abs(torch.tensor(img_after[1:]) - ref_img)).item()
    gap_before = torch.max(torch.abs(torch.tensor(img_before[1:]) - ref_img)).item()
    assert gap_after < 1e-3 and gap_before > 1e-2, (gap_after, gap_before)
    assert ray_local.get(worker.health.remote())["weight_version"] == 7


def test_weight_update_through_the_object_store(setup, ray_local, tiny_qwen25_dir, tmp_path):
    """The cross-node path on one machine (`fetch_everywhere`): the worker fetches the buckets from
    Ray's object store, stages them in its own shared-memory folder, loads them and removes the
    folder; the engine then scores as the new weights do. A plain shared-memory update follows."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from rollout.weight_transport import default_shm_root, is_policy_lm_weight, publish, version_folder, write_buckets

    cfg, envs, worker, router = setup
    tok = AutoTokenizer.from_pretrained(tiny_qwen25_dir)
    text = tok.encode("<|im_start|>user\nthe one that turns left<|im_end|>\n<|im_start|>assistant\n<think>",
                      add_special_tokens=False)
    node = ray_local.get_runtime_context().get_node_id()
    worker_pid = ray_local.get(worker.pid.remote())
    for version, transport in ((11, "object_store"), (12, "shared_memory")):
        model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_dir).eval()
        gen = torch.Generator().manual_seed(version)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        manifest = write_buckets(((n, p) for n, p in model.state_dict().items() if is_policy_lm_weight(n)),
                                 tmp_path, version=version, bucket_bytes=256 * 1024)
        update = publish(tmp_path, manifest, node)
        if transport == "object_store":
            update = update.shared(ray_local.put, fetch_everywhere=True)
        info = ray_local.get(worker.update_weights.remote(update, version))
        assert info["transport"] == transport and info["version"] == version
        assert info["tensors"] == sum(f["tensors"] for f in update.manifest["files"])
        _, after = ray_local.get(worker.score_sequence.remote(text, []))
        gap = torch.max(torch.abs(torch.tensor(after[1:]) - _hf_logprobs(model, text, {}))).item()
        assert gap < 1e-4, (transport, gap)
        staged = default_shm_root() / f"videoseg_staged_{worker_pid}"
        assert not version_folder(staged, version).exists(), "the staged copy must go once the engine holds it"
