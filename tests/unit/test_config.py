"""The config tree: presets validate, overrides apply, bad values are named, imports stay light."""

import subprocess
import sys

import pytest

from configs import QWEN_UNIT, ConfigError, available_presets, dump_config, load_config, parse_override
from configs.loader import config_from_yaml_text

PAPER_PATHS = ["model.policy=/models/coldstart", "model.sam2_checkpoint=/models/sam2.1_hiera_large.pt"]


def test_import_configs_pulls_in_no_heavy_package():
    code = ("import sys, configs; configs.load_config(); "
            "heavy = [m for m in ('torch', 'ray', 'vllm', 'transformers', 'deepspeed') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_presets_listed():
    assert {"debug_cpu", "paper_2b", "paper_4b"} <= set(available_presets())


def test_default_is_debug_cpu_and_valid():
    cfg = load_config()
    assert cfg.run.name == "debug_cpu"
    assert cfg.model.is_tiny_policy and cfg.model.sam2_config == "tiny"
    assert cfg.cluster.ray_address is None and cfg.cluster.ledger_redis_url is None
    assert cfg.env.frame_cache.backend == "lru"


@pytest.mark.parametrize("preset", ["paper_2b", "paper_4b"])
def test_paper_presets_carry_the_papers_numbers(preset):
    cfg = load_config(preset, PAPER_PATHS)
    env, lr, ro = cfg.env, cfg.learner, cfg.rollout
    assert (env.initial_low_res_frames, env.low_res_pixels) == (10, 32 * QWEN_UNIT)
    assert (env.initial_high_res_frames, env.high_res_pixels) == (5, 128 * QWEN_UNIT)
    assert env.keyframe_pixels == 256 * QWEN_UNIT and env.max_turns == 3 and env.select_reply_frames == 5
    assert (lr.group_size, lr.prompts_per_step, lr.lr, lr.lr_schedule) == (4, 16, 3e-6, "linear")
    assert (lr.kl_coef, lr.kl_estimator, lr.zero_stage, lr.precision) == (0.04, "k3", 2, "bf16")
    assert lr.calibration and lr.aux_mask_weight == 0.2 and lr.calibration_size == 32
    assert (ro.sampling.temperature, ro.sampling.top_p, ro.sampling.max_new_tokens) == (0.9, 0.9, 512)
    assert cfg.run.steps == 1000
    assert (cfg.eval.initial_low_res_frames, cfg.eval.initial_high_res_frames) == (20, 8)
    assert cfg.eval.keyframe_pixels == 512 * QWEN_UNIT


def test_paper_preset_demands_real_checkpoints():
    with pytest.raises(ConfigError, match="model.policy is not set"):
        load_config("paper_2b", ["model.sam2_checkpoint=/x.pt"])
    with pytest.raises(ConfigError, match="sam2_checkpoint is not set"):
        load_config("paper_2b", ["model.policy=/models/p"])


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(overrides=["learner.lr=1e-6", "run.resume=true", "env.max_turns=2",
                                 "rollout.sampling.temperature=0.5", "learner.adam_betas=[0.9, 0.95]"])
    assert cfg.learner.lr == 1e-6 and cfg.run.resume is True and cfg.env.max_turns == 2
    assert cfg.rollout.sampling.temperature == 0.5 and cfg.learner.adam_betas == (0.9, 0.95)


def test_text_that_looks_like_block_yaml_stays_text():
    # a Redis key prefix ends with ':'; block YAML would read it as a one-key mapping
    cfg = load_config(overrides=["cluster.ledger_key_prefix=vso3:test:", "run.name=- x"])
    assert cfg.cluster.ledger_key_prefix == "vso3:test:" and cfg.run.name == "- x"


def test_override_list_of_datasets():
    cfg = load_config(overrides=["data.train=[{name: r, format: revos, root: /d, weight: 2}]"])
    assert cfg.data.train[0].format == "revos" and cfg.data.train[0].weight == 2


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("learner.lr=-1", "learner.lr = -1"),
        ("learner.group_size=1", "learner.group_size = 1"),
        ("env.max_turns=0", "env.max_turns = 0"),
        ("learner.kl_estimator=k9", "learner.kl_estimator = 'k9'"),
        ("rollout.sampling.top_p=1.5", "rollout.sampling.top_p = 1.5"),
        ("model.sam2_image_size=1000", "multiple of 16"),
        ("learner.lr=fast", "learner.lr = 'fast'"),
        ("learner.sam_decoder_lr_scale=-0.1", "learner.sam_decoder_lr_scale = -0.1"),
        ("learner.projector_lr_scale=0", "learner.projector_lr_scale = 0"),
        ("reward.weights={bogus: 1}", "unknown reward terms ['bogus']"),
        ("data.train=[{name: r, format: revos}]", "needs a root path"),
        ("env.frame_cache.backend=redis", "needs redis_url"),
        ("env.frame_cache.redis_url=redis://:pw@host:1/0", "must not carry credentials"),
    ],
)
def test_bad_values_are_named(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert fragment in str(err.value)


def test_unknown_fields_rejected_with_known_list():
    with pytest.raises(ConfigError, match="unknown field 'lrr' in learner"):
        load_config(overrides=["learner.lrr=1"])
    with pytest.raises(ConfigError, match="unknown field 'nope' in the top level"):
        load_config(overrides=["nope.x=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("learner.lr")


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file="/no/such.yaml")


def test_reward_switches_default_intended_and_reference_shorthand():
    cfg = load_config()
    r = cfg.reward
    assert r.dense_branches and r.inclusive_interval and r.empty_keyframe_iou_one and r.require_final_answer
    ref = load_config(overrides=["reward.reference_behaviour=true"]).reward
    assert not (ref.dense_branches or ref.inclusive_interval or ref.empty_keyframe_iou_one
                or ref.require_final_answer)


def test_dotted_key_into_a_mapping_changes_one_entry():
    # reward.weights.X=v keeps the other terms at their default weight; a whole mapping replaces it
    weights = load_config(overrides=["reward.weights.progressive=0", "reward.weights.mask=2"]).reward.weights
    assert weights["progressive"] == 0.0 and weights["mask"] == 2.0
    assert all(w == 1.0 for t, w in weights.items() if t not in ("progressive", "mask"))
    whole = load_config(overrides=["reward.weights={mask: 2}"]).reward.weights
    assert whole["mask"] == 2.0 and sum(whole.values()) == 2.0
    with pytest.raises(ConfigError, match="unknown reward terms"):
        load_config(overrides=["reward.weights.bogus=1"])


def test_dump_roundtrip():
    cfg = load_config(overrides=["learner.lr=2e-5"])
    again = config_from_yaml_text(dump_config(cfg))
    assert again == cfg
