"""The typed configuration tree of the whole system.

Plain pydantic v2 only: importing this module must never pull in torch, Ray or vLLM, because the
driver validates the config before it starts anything heavy, and tools (manifest generators, the
CLI help) read it on machines without the ML stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Qwen-VL images are cut into 14x14 patches merged 2x2, so pixel budgets are naturally written as
# "N * 28 * 28"; the paper states them that way.
QWEN_UNIT = 28 * 28

TINY_POLICIES = ("tiny-qwen2.5-vl", "tiny-qwen3-vl")


class Section(BaseModel):
    """Base of every config node: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
class ModelConfig(Section):
    policy: str | None = Field(
        "tiny-qwen2.5-vl",
        description="HF directory of the policy (Qwen2.5-VL / Qwen3-VL with [SEG] added), or one of "
        "the locally built tiny policies: " + ", ".join(TINY_POLICIES),
    )
    projector_checkpoint: Path | None = Field(
        None, description="safetensors file with the [SEG] projector; None = fresh init"
    )
    sam2_config: str = Field(
        "tiny",
        description="'tiny' (random CPU-sized SAM2) or a sam2 config name/path such as "
        "configs/sam2.1/sam2.1_hiera_l.yaml",
    )
    sam2_checkpoint: Path | None = Field(None, description="SAM2 .pt checkpoint; None = random weights")
    sam2_image_size: int = Field(1024, ge=64, le=2048, description="SAM2 input side in pixels")
    seg_embed_dim: int = Field(256, ge=1, description="width of SAM2 prompt tokens")
    dtype: Literal["fp32", "bf16"] = "bf16"
    vision_attention: Literal["batched", "per_block"] = Field(
        "batched",
        description="learner's vision-tower attention without flash-attn: 'batched' stacks equal-length "
        "images/windows into one call (same result, far fewer kernel launches); 'per_block' keeps "
        "transformers' one call per image/window",
    )
    cache_dir: Path = Field(Path(".cache/videoseg"), description="where tiny models are built and kept")
    allow_random_init: bool = Field(
        False,
        description="permit random SAM2/projector weights when no checkpoint is given "
        "(tiny debug runs set this; a real run must not silently train from noise)",
    )

    @field_validator("sam2_image_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (SAM2's patch stride), got {v}")
        return v

    @property
    def is_tiny_policy(self) -> bool:
        return self.policy in TINY_POLICIES


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
DatasetFormat = Literal["synthetic", "revos", "mevis", "refsav", "davis", "refytvos", "vtscot"]


class DatasetSpec(Section):
    name: str = Field(..., min_length=1)
    format: DatasetFormat
    root: Path | None = Field(None, description="dataset root; None only for 'synthetic'")
    meta_file: str | None = Field(
        None, description="meta_expressions file name inside root (format default when None)"
    )
    weight: float = Field(1.0, gt=0, description="sampling weight among datasets")
    optional: bool = Field(False, description="skip this dataset (with a warning) when its root is missing")
    # synthetic only
    videos: int = Field(24, ge=1, description="synthetic: number of videos to generate")
    seed: int = Field(0, description="synthetic: generator seed")
    frames_per_video: int = Field(24, ge=4, le=2000, description="synthetic: frames per video")
    image_size: tuple[int, int] = Field((96, 128), description="synthetic: (height, width)")

    @model_validator(mode="after")
    def _root_needed(self) -> "DatasetSpec":
        if self.format != "synthetic" and self.root is None:
            raise ValueError(f"dataset '{self.name}' of format '{self.format}' needs a root path")
        return self


class DataConfig(Section):
    train: list[DatasetSpec] = Field(
        default_factory=lambda: [DatasetSpec(name="synthetic", format="synthetic")]
    )
    eval: list[DatasetSpec] = Field(default_factory=list)
    index_dir: Path | None = Field(
        None, description="where Parquet sample indexes are written; None = <run.output_dir>/index"
    )
    max_quarantine_fraction: float = Field(
        0.05, ge=0, le=1, description="stop the run if more than this share of samples is unusable"
    )


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------
class FrameCacheConfig(Section):
    backend: Literal["lru", "redis"] = "lru"
    capacity_mb: int = Field(512, ge=1, description="in-process LRU size")
    redis_url: str | None = Field(None, description="redis://host:port/db (no password here)")
    redis_password_env: str = Field(
        "VIDEOSEG_REDIS_PASSWORD", description="environment variable holding the Redis password"
    )
    key_prefix: str = Field("vso3:frame:", min_length=1)
    ttl_s: int = Field(24 * 3600, ge=0, description="0 = no expiry")

    @model_validator(mode="after")
    def _redis_url(self) -> "FrameCacheConfig":
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("frame cache backend 'redis' needs redis_url")
        if self.redis_url and "@" in self.redis_url.split("//", 1)[-1]:
            raise ValueError(
                "redis_url must not carry credentials; put the password in the environment "
                f"variable named by redis_password_env ({self.redis_password_env})"
            )
        return self


class EnvConfig(Section):
    initial_low_res_frames: int = Field(10, ge=1, le=256, description="T, uniform over the video")
    low_res_pixels: int = Field(32 * QWEN_UNIT, ge=QWEN_UNIT, description="pixel budget per low-res frame")
    initial_high_res_frames: int = Field(5, ge=0, le=64, description="K")
    high_res_pixels: int = Field(128 * QWEN_UNIT, ge=QWEN_UNIT)
    select_reply_frames: int = Field(5, ge=1, le=64, description="frames from [s, e] per select reply")
    keyframe_pixels: int = Field(256 * QWEN_UNIT, ge=QWEN_UNIT)
    max_turns: int = Field(3, ge=1, le=16, description="assistant turns per episode")
    frame_cache: FrameCacheConfig = Field(default_factory=FrameCacheConfig)
    num_actors: int = Field(1, ge=1)


# --------------------------------------------------------------------------------------------
# rollout
# --------------------------------------------------------------------------------------------
class SamplingConfig(Section):
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)


WeightTransport = Literal["auto", "shared_memory", "object_store"]


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="on the CPU build: fraction of RAM for the engine"
    )
    cpu_kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    max_model_len: int = Field(16384, ge=256)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    max_episodes_in_flight: int = Field(64, ge=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    eval_sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=512)
    )
    request_timeout_s: float = Field(600, gt=0)
    constrain_format: bool = Field(
        False,
        description="constrain sampling to the action grammar (structured outputs): every turn is "
        "well-formed and only the content is learned; for debugging and weak base models",
    )
    block_size: int | None = Field(None, ge=1, description="KV cache block size; None = vLLM's default")
    weight_transport: WeightTransport = Field(
        "auto",
        description="how new weights reach the engines: shared memory of the writer's node, plus Ray's "
        "object store when the cluster has more than one node (auto), or always (object_store)",
    )


# --------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------
REWARD_TERMS = (
    "format",
    "step_format",
    "interval",
    "keyframe",
    "mask",
    "keyframe_vs_video",
    "progressive",
)


class RewardConfig(Section):
    weights: dict[str, float] = Field(default_factory=lambda: {t: 1.0 for t in REWARD_TERMS})
    # The switches of METHOD.md section 3. Defaults are the intended behaviour; set
    # `reference_behaviour: true` to reproduce what the paper's released code actually trained with.
    reference_behaviour: bool = Field(
        False, description="shorthand: set all four switches below to the reference code's behaviour"
    )
    dense_branches: bool = Field(True, description="linear branches of the last two terms")
    inclusive_interval: bool = Field(True, description="interval term counts frame e")
    empty_keyframe_iou_one: bool = Field(True, description="IoU of two empty keyframe masks is 1")
    require_final_answer: bool = Field(True, description="format term needs the last turn to answer")
    num_actors: int = Field(1, ge=1)
    batch_frames: int = Field(32, ge=1, description="frames per image-encoder batch")
    feature_cache_frames: int = Field(512, ge=0, description="image features kept per actor")
    score_timeout_s: float = Field(600, gt=0)

    @field_validator("weights")
    @classmethod
    def _known_terms(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(REWARD_TERMS))
        if unknown:
            raise ValueError(f"unknown reward terms {unknown}; known: {list(REWARD_TERMS)}")
        return {t: float(v.get(t, 0.0)) for t in REWARD_TERMS}

    @model_validator(mode="after")
    def _apply_reference(self) -> "RewardConfig":
        if self.reference_behaviour:
            for name in ("dense_branches", "inclusive_interval", "empty_keyframe_iou_one",
                         "require_final_answer"):
                object.__setattr__(self, name, False)
        return self


# --------------------------------------------------------------------------------------------
# learner
# --------------------------------------------------------------------------------------------
def _require_prompt_teacher(section: str, weight: float, teacher: Path | None) -> None:
    if weight > 0 and teacher is None:
        raise ValueError(f"{section}.prompt_align_weight > 0 needs {section}.prompt_teacher (a .words.pt file "
                         "written by python -m segmentation.pretrain_text_prompt)")


class LearnerConfig(Section):
    group_size: int = Field(4, ge=2, description="G rollouts per prompt")
    prompts_per_step: int = Field(16, ge=1)
    lr: float = Field(3e-6, gt=0, lt=1)
    lr_schedule: Literal["constant", "linear"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    clip_eps_low: float = Field(0.2, gt=0, lt=1)
    clip_eps_high: float = Field(0.2, gt=0)
    tis_cap: float = Field(2.0, ge=1, description="truncated importance-sampling cap (off-policy)")
    kl_coef: float = Field(0.04, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    loss_aggregation: Literal["seq_mean_token_mean", "token_mean", "dr_grpo"] = "seq_mean_token_mean"
    drop_zero_variance_groups: bool = False
    advantage_eps: float = Field(1e-4, gt=0)
    calibration: bool = True
    calibration_size: int = Field(32, ge=4, le=256)
    aux_mask_weight: float = Field(0.2, ge=0)
    score_head_weight: float = Field(
        1.0, ge=0, description="SAM2's object-score BCE and IoU-prediction MSE, added to every supervised "
        "mask loss (RL aux, SFT): the heads that gate and pick masks at inference train with the decoder")
    projector_lr_scale: float = Field(
        1.0, gt=0, description="the [SEG] projector's learning rate as a multiple of lr")
    sam_decoder_lr_scale: float = Field(
        1.0, ge=0, description="SAM2 prompt encoder + mask decoder learning rate as a multiple of lr "
        "(0 freezes them); a slower decoder keeps it responsive to the [SEG] prompt while the policy "
        "learns to encode the target")
    updates_per_batch: int = Field(1, ge=1)
    reference_policy: Literal["frozen_copy", "none"] = "frozen_copy"
    zero_stage: Literal[1, 2, 3] = 2
    precision: Literal["fp32", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    checkpoint_fraction: float = Field(
        1.0, ge=0, le=1, description="with gradient_checkpointing, the fraction of decoder layers and vision "
        "blocks (evenly spaced) that recompute activations in the backward pass; the rest keep them, which "
        "trades GPU memory for less recompute")
    compile_blocks: bool = Field(
        False, description="torch.compile each decoder layer and vision block of the trained policy "
        "(learner/blocks.py): fuses the element-wise work between matrix products; the first steps "
        "pay the compile time")
    micro_batch_tokens: int = Field(16384, ge=64)
    head_chunk_tokens: int = Field(
        4096, ge=0, description="scored positions that go through the LM head at once (learner/token_head.py); "
        "each chunk's vocabulary logits are recomputed in the backward pass instead of kept. 0: all at once, "
        "kept (float32 logits of every assistant token: tens of GiB for a 2B model at 64k tokens)")
    num_ranks: int = Field(1, ge=1)
    freeze_vision: bool = False
    prompt_teacher: Path | None = Field(
        None, description="RL counterpart of sft.prompt_teacher: a .words.pt file of "
        "segmentation.pretrain_text_prompt whose prompt for the expression anchors every projected [SEG]")
    prompt_align_weight: float = Field(
        0.0, ge=0, description="weight of the [SEG] prompt anchor during RL (squared error to the teacher's "
        "prompt, divided by the teacher prompts' variance over the training expressions); 0 = off. It stops "
        "the aux mask loss from wearing away the expression routing a tiny policy learned in SFT")

    @model_validator(mode="after")
    def _teacher_for_anchor(self):
        _require_prompt_teacher("learner", self.prompt_align_weight, self.prompt_teacher)
        return self

    @property
    def episodes_per_step(self) -> int:
        return self.group_size * self.prompts_per_step


# --------------------------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------------------------
class RoleResources(Section):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class ClusterConfig(Section):
    ray_address: str | None = Field(
        None, description="None: start Ray in-process; 'auto' or host:port: connect (RAY_ADDRESS wins)"
    )
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    rollout: RoleResources = Field(default_factory=RoleResources)
    reward: RoleResources = Field(default_factory=RoleResources)
    env: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5))
    learner: RoleResources = Field(default_factory=RoleResources)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = "PACK"
    ledger_redis_url: str | None = Field(None, description="None: embedded SQLite ledger in the run dir")
    redis_password_env: str = "VIDEOSEG_REDIS_PASSWORD"
    ledger_key_prefix: str = Field("vso3:ledger:", min_length=1)
    actor_max_restarts: int = Field(3, ge=0)
    object_store_memory_mb: int | None = Field(None, ge=64)

    @field_validator("ledger_redis_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v and "@" in v.split("//", 1)[-1]:
            raise ValueError("must not carry credentials; use the redis_password_env variable")
        return v


# --------------------------------------------------------------------------------------------
# evaluation and run
# --------------------------------------------------------------------------------------------
class EvalConfig(Section):
    initial_low_res_frames: int = Field(20, ge=1)
    initial_high_res_frames: int = Field(8, ge=0)
    keyframe_pixels: int = Field(512 * QWEN_UNIT, ge=QWEN_UNIT)
    max_turns: int = Field(3, ge=1)
    every_steps: int = Field(0, ge=0, description="evaluate during training every N steps; 0 = never")
    max_samples: int | None = Field(
        None, ge=1, description="per evaluation dataset: score this many samples, evenly spread over its "
        "sorted sample ids (None = all)")
    output_dir: Path = Field(Path("runs/eval"), description="where `learner.evaluate` writes results and reports")
    compute_rewards: bool = Field(
        True, description="also score the greedy episodes with the RL reward (mean reward in the report)")


class SFTConfig(Section):
    """Cold-start supervised training on VTS-CoT trajectories (`python -m learner.sft`).

    The optimizer, precision and ZeRO settings come from `learner`; the fields here replace the RL
    schedule (lr, steps) and set the two losses."""

    trajectories: Path | None = Field(
        None, description="VTS-CoT file (.jsonl or .json); its sample ids must name datasets of data.train")
    output_dir: Path = Field(Path("runs/sft"), description="metrics.jsonl, config.yaml and the policy/ dir")
    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="trajectories per optimizer step")
    lr: float = Field(1e-4, gt=0, lt=1)
    lr_schedule: Literal["constant", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    lm_loss_weight: float = Field(1.0, ge=0, description="token-mean cross-entropy on assistant tokens")
    mask_loss_weight: float = Field(1.0, ge=0, description="BCE + Dice of every [SEG]'s mask")
    prompt_teacher: Path | None = Field(
        None, description="word-vector file of a text-prompt pre-trained SAM2 (segmentation.pretrain_text_prompt "
        "writes <checkpoint>.words.pt); the expression's prompt vector there is the target of prompt_align_weight")
    prompt_align_weight: float = Field(
        0.0, ge=0, description="weight of the mean squared error between every projected [SEG] token and the "
        "teacher's prompt for the expression, divided by the teacher prompts' variance over the training "
        "expressions (1 = the error of always writing the mean prompt); 0 = off; needs prompt_teacher")
    mask_on_seen_keyframe: bool = Field(
        True, description="besides the keyframe a turn writes, supervise its [SEG] on the keyframe it was "
        "looking at (the frame the RL reward judges it on)")
    export_every: int = Field(
        0, ge=0, description="also export the policy every N steps to output_dir/checkpoints/step_<N>/ "
        "(complete HF policies, e.g. for choosing a checkpoint on a validation set); 0 = only the final policy/")
    validate_every: int = Field(0, ge=0, description="greedy first turns on data.eval prompts every N steps "
                                                     "(0 = only before and after training when data.eval is set)")
    validate_samples: int = Field(16, ge=1, description="prompts in the validation probe")
    validate_max_new_tokens: int = Field(160, ge=8)
    log_every: int = Field(10, ge=1)
    strict_frames: bool = Field(
        False, description="a record whose shown frames differ from what this env config shows is an "
        "error (default: it is skipped with a warning)")

    @model_validator(mode="after")
    def _some_loss(self) -> "SFTConfig":
        if self.lm_loss_weight == 0 and self.mask_loss_weight == 0:
            raise ValueError("lm_loss_weight and mask_loss_weight are both 0: nothing to train")
        _require_prompt_teacher("sft", self.prompt_align_weight, self.prompt_teacher)
        return self


class RunConfig(Section):
    name: str = "debug"
    output_dir: Path = Path("runs/debug")
    steps: int = Field(1000, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    seed: int = 0
    resume: bool = False
    async_mode: bool = False
    max_staleness: int = Field(1, ge=0, description="policy versions a rollout may lag (async)")
    log_every: int = Field(1, ge=1)
    step_timeout_s: float = Field(3600, gt=0)


class Config(Section):
    """The root of the tree. Sections mirror the packages that consume them."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.learner.precision == "bf16" and self.model.dtype == "fp32":
            raise ValueError("learner.precision=bf16 needs model.dtype=bf16")
        if not self.model.policy:
            raise ValueError("model.policy is not set: give an HF checkpoint directory "
                             f"(model.policy=/path/to/policy) or one of {list(TINY_POLICIES)}")
        if not self.model.allow_random_init and self.model.sam2_checkpoint is None:
            raise ValueError(
                "model.sam2_checkpoint is not set and model.allow_random_init is false: give a SAM2 "
                "checkpoint path, or set model.allow_random_init=true for a debug run"
            )
        return self
