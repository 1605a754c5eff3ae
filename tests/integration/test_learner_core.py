"""The learner core in-process (no Ray): real tiny policy, real SAM2 pool core, real DeepSpeed."""

import os

import numpy as np
import pytest
import torch

from tests.conftest import CACHE_DIR, free_port

pytestmark = pytest.mark.slow

SELECT = ('<think> Step 1: it moves. Step 2: left. Step 3: matches. Action: select. </think><select><VTG>'
          '{"start": 2, "end": 9, "keyframe": 5}</VTG><RefSeg>[SEG]</RefSeg></select>')
ANSWER = ('<think> Step 1: it moves. Step 2: left. Step 3: matches. Action: answer. </think><answer><VTG>'
          '{"start": 3, "end": 9, "keyframe": 6}</VTG><RefSeg>[SEG]</RefSeg></answer>')


@pytest.fixture(scope="module")
def world(tiny_qwen25_dir, tiny_sam2_ckpt, tmp_path_factory):
    from transformers import AutoTokenizer

    from configs import load_config
    from env.prompts import SYSTEM_PROMPT
    from env.service import EnvService
    from rollout.conversation import ConversationCodec
    from rollout.processor_config import image_token_count
    from rollout.replay import replay_episode
    from segmentation.reward_pool import RewardPoolCore

    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    cfg = load_config(overrides=[f"model.cache_dir={CACHE_DIR}",
                                 "data.train=[{name: synthetic, format: synthetic, videos: 3, seed: 5, frames_per_video: 16}]"])
    env = EnvService(cfg.env, cfg.data.train, cache_dir=str(CACHE_DIR))
    codec = ConversationCodec(AutoTokenizer.from_pretrained(tiny_qwen25_dir), SYSTEM_PROMPT)
    tokens = lambda im: image_token_count(im.shape[0], im.shape[1], "qwen2.5-vl")  # noqa: E731
    samples = [env.sample(i) for i in env.sample_ids()[:2]]
    # Group members that differ in format and grounding, so rewards (and advantages) differ.
    plays = [[ANSWER], [SELECT, ANSWER], ["the red square is on the left [SEG]"], [ANSWER.replace('"start": 3', '"start": 0')]]
    trajs = [replay_episode(s, plays[g], env, codec, tokens, group_index=g) for s in samples for g in range(4)]
    pool = RewardPoolCore(cfg.model, cfg.reward, 128, datasets=cfg.data.train, data_cache_dir=str(CACHE_DIR))
    return cfg, env, trajs, pool, tiny_qwen25_dir


def _core(world, **overrides):
    from learner.core import LearnerCore

    cfg, env, trajs, pool, policy_dir = world
    cfg = cfg.model_copy(update={"learner": cfg.learner.model_copy(update=overrides)})
    return LearnerCore(cfg, policy_dir, frame_fetcher=env.frames_for, gt_fetcher=env.gt_masks)


def _items(core, world):
    from configs import load_config  # noqa: F401
    from learner.rl_step import advantages, score_requests, train_items

    cfg, env, trajs, pool, _ = world
    outs = core.score(trajs)
    pool.update_weights(pool.version + 1, core.head_weights())
    results = pool.score(score_requests(trajs, outs))
    adv, keep = advantages(trajs, results, core.cfg)
    return outs, results, train_items(trajs, outs, results, adv, keep, core.cfg)


def _snapshot(module, prefix):
    return {n: p.detach().clone() for n, p in module.named_parameters() if n.startswith(prefix)}


def test_score_pass_gives_seg_states_and_logprobs(world):
    core = _core(world)
    cfg, env, trajs, pool, _ = world
    outs = core.score(trajs)
    assert {t.end_reason for t in trajs} == {"answer", "malformed"}
    for t, o in zip(trajs, outs):
        assert len(o.seg_hidden) == t.num_turns and all(h is not None and h.shape == (128,) for h in o.seg_hidden)
        assert len(o.old_logp) == t.num_generated and all(lp <= 0 for lp in o.old_logp)
        # the reference policy starts equal to the policy
        assert np.allclose(o.old_logp, o.ref_logp, atol=1e-5)


def test_shared_vision_encoding_is_exact(world):
    """Encoding each distinct frame once gives the same hidden states as encoding every slot."""
    core = _core(world)
    cfg, env, trajs, pool, _ = world
    mb = core.collator(trajs, list(range(4)))  # one group: shared turn-0 frames
    assert len(mb.unique_grid) < len(mb.image_grid_thw)
    module = core.module
    with torch.no_grad():
        shared = module.hidden_states(mb.input_ids, mb.attention_mask, mb.pixel_values, mb.image_grid_thw,
                                      mb.image_index, mb.unique_grid)
        rows = torch.split(mb.pixel_values, [int(g.prod()) for g in mb.unique_grid])
        full_pv = torch.cat([rows[i] for i in mb.image_index.tolist()])
        plain = module.hidden_states(mb.input_ids, mb.attention_mask, full_pv, mb.image_grid_thw)
    assert torch.allclose(shared, plain, atol=1e-5)


def test_rope_positions_from_the_collated_batch_equal_the_ones_transformers_computes(world):
    """The learner passes multimodal RoPE positions computed on the host before the batch moves
    (no host syncs in the GPU forward); they must equal what transformers derives itself."""
    core = _core(world)
    cfg, env, trajs, pool, _ = world
    mb = core.collator(trajs, list(range(len(trajs))))
    assert mb.position_ids is not None and mb.position_ids.shape == (3, *mb.input_ids.shape)
    image = mb.input_ids == core.module.lm.config.image_token_id
    # image tokens carry 2-D positions: height and width axes differ from the temporal one
    assert (mb.position_ids[1][image] != mb.position_ids[2][image]).any()
    module = core.module
    with torch.no_grad():
        given = module.hidden_states(mb.input_ids, mb.attention_mask, mb.pixel_values, mb.image_grid_thw,
                                     mb.image_index, mb.unique_grid, mb.position_ids)
        derived = module.hidden_states(mb.input_ids, mb.attention_mask, mb.pixel_values, mb.image_grid_thw,
                                       mb.image_index, mb.unique_grid)
        flat = torch.arange(mb.input_ids.shape[1]).expand(3, *mb.input_ids.shape)  # 1-D positions
        ignored = module.hidden_states(mb.input_ids, mb.attention_mask, mb.pixel_values, mb.image_grid_thw,
                                       mb.image_index, mb.unique_grid, flat)
    assert torch.equal(given, derived)
    assert not torch.allclose(ignored, derived, atol=1e-3)  # the positions passed are the ones used
    # a text-only batch has no multimodal positions to precompute
    assert module.rope_position_ids(mb.input_ids, mb.attention_mask, None) is None


@pytest.mark.parametrize("calibration", [True, False])
def test_calibration_gradient_reaches_projector_and_decoder(world, calibration):
    core = _core(world, calibration=calibration, aux_mask_weight=0.0, kl_coef=0.0, lr=1e-3)
    _, _, (items, totals) = _items(core, world)
    before = {p: _snapshot(core.module, p) for p in ("projector.", "sam_mask_decoder.", "lm.")}
    stats = core.train(items, totals)
    changed = {p: any(not torch.equal(v, dict(core.module.named_parameters())[n]) for n, v in snap.items())
               for p, snap in before.items()}
    assert changed["lm."]  # the policy-gradient term always trains the LLM
    assert changed["projector."] == calibration and changed["sam_mask_decoder."] == calibration
    assert (stats["calib_sum"] != 0.0) == calibration


def test_aux_mask_loss_trains_the_decoder_and_goes_down(world):
    core = _core(world, calibration=False, aux_mask_weight=1.0, kl_coef=0.0, lr=3e-3)
    _, _, (items, totals) = _items(core, world)
    first = core.train(items, totals)["aux_sum"]
    for _ in range(3):
        last = core.train(items, totals)["aux_sum"]
    assert last < first


@pytest.mark.parametrize("score_head_weight", [1.0, 0.0])
def test_supervised_masks_train_the_object_score_and_iou_heads(world, score_head_weight):
    # These heads gate frames and pick the mask at inference; BCE + Dice alone never reaches them.
    core = _core(world, calibration=False, aux_mask_weight=1.0, score_head_weight=score_head_weight,
                 kl_coef=0.0, lr=1e-3)
    _, _, (items, totals) = _items(core, world)
    heads = ("sam_mask_decoder.pred_obj_score_head.", "sam_mask_decoder.iou_prediction_head.")
    before = {h: _snapshot(core.module, h) for h in heads}
    assert all(before.values())
    core.train(items, totals)
    params = dict(core.module.named_parameters())
    for h, snap in before.items():
        changed = any(not torch.equal(v, params[n]) for n, v in snap.items())
        assert changed == (score_head_weight > 0), h


def test_head_learning_rate_scales(world):
    # A decoder scale of 0 freezes SAM2's prompt encoder and mask decoder; the LM and the projector
    # still train, and each group runs at its multiple of lr.
    core = _core(world, calibration=False, aux_mask_weight=1.0, kl_coef=0.0, lr=1e-3,
                 projector_lr_scale=3.0, sam_decoder_lr_scale=0.0)
    assert [g["lr"] for g in core.optimizer.param_groups] == pytest.approx([1e-3, 3e-3])
    _, _, (items, totals) = _items(core, world)
    before = {p: _snapshot(core.module, p) for p in ("projector.", "sam_mask_decoder.", "sam_prompt_encoder.", "lm.")}
    core.train(items, totals)
    params = dict(core.module.named_parameters())
    changed = {p: any(not torch.equal(v, params[n]) for n, v in snap.items()) for p, snap in before.items()}
    assert changed == {"projector.": True, "sam_mask_decoder.": False, "sam_prompt_encoder.": False, "lm.": True}
    slow = _core(world, lr=1e-3, sam_decoder_lr_scale=0.1)
    assert [g["lr"] for g in slow.optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 1e-4])


def test_checkpoint_roundtrip_reproduces_the_next_step(world, tmp_path):
    core = _core(world, lr=1e-3)
    _, _, (items, totals) = _items(core, world)
    core.train(items, totals)
    core.save_checkpoint(tmp_path, "ck", {"step": 1})
    a = core.train(items, totals)
    params_a = {n: p.detach().clone() for n, p in core.module.named_parameters()}
    state = core.load_checkpoint(tmp_path, "ck")
    assert state["step"] == 1
    b = core.train(items, totals)
    for k in ("loss_sum", "grad_norm", "pg_loss_sum", "aux_sum", "calib_sum"):
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
    # Same numbers up to floating-point reduction order (multi-threaded CPU kernels).
    worst = max(float((p - params_a[n]).abs().max()) for n, p in core.module.named_parameters())
    assert worst < 1e-6, worst


def test_exported_policy_loads_back(world, tmp_path):
    from transformers import AutoModelForImageTextToText

    from learner.policy import HEADS_FILE, build_policy

    core = _core(world)
    out = core.export_policy(tmp_path / "policy")
    assert (out / HEADS_FILE).is_file() and (out / "tokenizer.json").is_file()
    lm = AutoModelForImageTextToText.from_pretrained(out)
    for (n, p), (m, q) in zip(lm.state_dict().items(), core.module.lm.state_dict().items()):
        assert n == m and torch.equal(p, q.cpu())
    cfg = world[0]
    again = build_policy(cfg.model, out)
    for k, v in core.head_weights().items():
        assert torch.equal(again.head_state_dict()[k], v)
    # vLLM loads every top-level *.safetensors and refuses names outside the HF model, so the
    # heads must not sit among them (an exported SFT policy once failed to start the rollout)
    from learner.eval_session import policy_lm_tensors

    saved = {n for n, _ in policy_lm_tensors(out)}
    assert len(saved) == len(core.module.lm.state_dict())
    assert all(n.startswith(("model.", "lm_head.", "visual.")) for n in saved)
    assert saved.isdisjoint(core.head_weights())


def test_rl_prompt_anchor_pulls_seg_tokens_to_the_teacher(world, tmp_path):
    """learner.prompt_align_weight: the [SEG] prompt anchor during RL goes down under training, is
    refused before its normaliser is set, and a teacher of the wrong width is refused at start."""
    from segmentation.pretrain_text_prompt import expression_words, words_path

    cfg, env, trajs, pool, _ = world
    expressions = env.expressions()
    assert len(set(expressions)) > 1
    words = sorted({w for e in expressions for w in expression_words(e)})
    teacher = words_path(tmp_path / "sam2_text.pt")
    torch.save({"vocabulary": words, "vectors": torch.randn(len(words) + 1, 256,
                                                            generator=torch.Generator().manual_seed(0))}, teacher)
    core = _core(world, prompt_teacher=teacher, prompt_align_weight=1.0, calibration=False, aux_mask_weight=0.0,
                 kl_coef=0.0, lr=3e-3)
    _, _, (items, totals) = _items(core, world)
    with pytest.raises(RuntimeError, match="set_prompt_pool"):
        core.train(items, totals)
    assert core.set_prompt_pool(expressions) > 0
    first = core.train(items, totals)["prompt_anchor"]
    for _ in range(4):
        last = core.train(items, totals)["prompt_anchor"]
    assert first > 0.1 and last < 0.7 * first, (first, last)

    torch.save({"vocabulary": words, "vectors": torch.zeros(len(words) + 1, 255)}, teacher)
    with pytest.raises(ValueError, match="projector writes"):
        _core(world, prompt_teacher=teacher, prompt_align_weight=1.0)


@pytest.mark.parametrize("gradient_checkpointing", [True, False])
def test_compiled_blocks_train_like_eager(world, gradient_checkpointing):
    # learner.compile_blocks must change speed only: the same scores (token log-probs, [SEG] states)
    # and the same step (every loss term, the gradient norm) as the eager policy, with HF gradient
    # checkpointing wrapped around the compiled blocks.
    from learner.blocks import repeated_blocks

    trajs = world[2]
    eager = _core(world, lr=1e-3, gradient_checkpointing=gradient_checkpointing)
    compiled = _core(world, lr=1e-3, gradient_checkpointing=gradient_checkpointing, compile_blocks=True)
    blocks = repeated_blocks(compiled.policy.lm)
    lm_cfg = compiled.policy.lm.config
    assert len(blocks) == lm_cfg.text_config.num_hidden_layers + lm_cfg.vision_config.depth
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert compiled.reference is not None
    assert all(b._compiled_call_impl is None for b in repeated_blocks(compiled.reference))
    torch._dynamo.reset()  # compile afresh, so the counter shows that this core's compiled blocks ran
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    scores = compiled.score(trajs)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before  # the compiled path ran
    for want, got in zip(eager.score(trajs), scores):
        np.testing.assert_allclose(got.old_logp, want.old_logp, rtol=1e-5, atol=1e-5)
        for h_want, h_got in zip(want.seg_hidden, got.seg_hidden):
            np.testing.assert_allclose(np.asarray(h_got), np.asarray(h_want), rtol=1e-4, atol=1e-5)
    _, _, (items, totals) = _items(eager, world)
    want, got = eager.train(items, totals), compiled.train(items, totals)
    for k in ("loss_sum", "grad_norm", "pg_loss_sum", "aux_sum", "calib_sum", "kl_sum"):
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    # No _orig_mod prefixes: checkpoints and weight sync see the same names.
    assert [n for n, _ in compiled.module.named_parameters()] == [n for n, _ in eager.module.named_parameters()]


def test_partial_checkpointing_trains_like_full(world):
    # learner.checkpoint_fraction trades memory for recompute only: the step matches the fully
    # checkpointed one, with about half of each stack keeping its activations.
    from learner.blocks import repeated_blocks

    full = _core(world, lr=1e-3, gradient_checkpointing=True)
    half = _core(world, lr=1e-3, gradient_checkpointing=True, checkpoint_fraction=0.5)
    flags = [b.gradient_checkpointing for b in repeated_blocks(half.policy.lm)]
    assert any(flags) and not all(flags)
    assert all(b.gradient_checkpointing for b in repeated_blocks(full.policy.lm))
    _, _, (items, totals) = _items(full, world)
    want, got = full.train(items, totals), half.train(items, totals)
    for k in ("loss_sum", "grad_norm", "pg_loss_sum", "aux_sum", "calib_sum", "kl_sum"):
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k


def test_chunked_lm_head_scores_and_trains_like_the_whole_head(world):
    # learner.head_chunk_tokens trades memory for one more head pass only: scores, the RL step (with
    # its entropy statistic) and the SFT step match the head evaluated on all tokens at once.
    trajs = world[2]
    whole = _core(world, lr=1e-3, head_chunk_tokens=0)
    chunked = _core(world, lr=1e-3, head_chunk_tokens=5)
    assert chunked.cfg.learner.head_chunk_tokens == 5
    for want, got in zip(whole.score(trajs), chunked.score(trajs)):
        np.testing.assert_allclose(got.old_logp, want.old_logp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.ref_logp, want.ref_logp, rtol=1e-5, atol=1e-6)
    _, _, (items, totals) = _items(whole, world)
    want, got = whole.train(items, totals), chunked.train(items, totals)
    for k in ("loss_sum", "grad_norm", "pg_loss_sum", "kl_sum", "entropy_sum"):
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
    no_masks = [[[] for _ in t.turns] for t in trajs]
    want = whole.sft_step(trajs, no_masks, {}, mask_weight=0.0)
    got = chunked.sft_step(trajs, no_masks, {}, mask_weight=0.0)
    assert want["tokens"] == got["tokens"] == sum(t.num_generated for t in trajs)
    for k in ("lm_loss", "token_accuracy", "grad_norm"):
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
