"""Building SAM2 models with the real `sam2` package, from a config and a `.pt` checkpoint.

Three ways to name a config:
  - "tiny": a CPU-sized variant of SAM2.1 Hiera-T for tests and the debug run (narrow trunk,
    one memory-attention layer); it is derived at build time from the package's own Hiera-T
    config plus the overrides below, so nothing of SAM2's files is copied here;
  - a config inside the sam2 package, e.g. "configs/sam2.1/sam2.1_hiera_l.yaml";
  - a path to a YAML file on disk.

Random weights are only produced on request (`allow_random`). They are materialised once into a
`.pt` file (`materialize_random_checkpoint`) so every actor of a run (reward pool replicas and the
learner) loads bit-identical weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

TINY = "tiny"
TINY_BASE = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_OVERRIDES = [
    "model.image_encoder.trunk.embed_dim=32",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",  # a global block may not open a stage
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.dim_feedforward=512",
    "model.memory_encoder.fuser.num_layers=1",
    "model.image_size=256",
]
# What SAM2's own builders switch on for inference (documented behaviour of build_sam2).
POSTPROCESSING_OVERRIDES = [
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]


class Sam2ConfigError(ValueError):
    pass


def sam2_package_dir() -> Path:
    import sam2

    return Path(sam2.__path__[0])


def resolve_config_path(name: str) -> tuple[Path, list[str]]:
    """Return (yaml path, extra overrides) for a config name."""
    if name == TINY:
        return sam2_package_dir() / TINY_BASE, list(TINY_OVERRIDES)
    p = Path(name)
    if p.is_file():
        return p, []
    in_pkg = sam2_package_dir() / name
    if in_pkg.is_file():
        return in_pkg, []
    raise Sam2ConfigError(
        f"SAM2 config '{name}' not found as a file or inside the sam2 package "
        f"({sam2_package_dir() / 'configs'}); use 'tiny', a package config such as "
        "'configs/sam2.1/sam2.1_hiera_l.yaml', or a YAML path"
    )


def load_model_config(name: str, image_size: int | None = None, extra: list[str] | None = None):
    from omegaconf import OmegaConf

    path, overrides = resolve_config_path(name)
    cfg = OmegaConf.load(path)
    if "model" not in cfg:
        raise Sam2ConfigError(f"{path} has no 'model' section; is it a SAM2 model config?")
    overrides = overrides + POSTPROCESSING_OVERRIDES + list(extra or [])
    if image_size is not None:
        overrides.append(f"model.image_size={int(image_size)}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    # RoPE tables in memory attention are sized for image_size/16; SAM2 recomputes them lazily when
    # the feature map differs, but set them right so the first call does no extra work.
    side = int(cfg.model.image_size) // 16
    for att in ("self_attention", "cross_attention"):
        node = cfg.model.memory_attention.layer.get(att)
        if node is not None and "feat_sizes" in node:
            node.feat_sizes = [side, side]
    OmegaConf.resolve(cfg)
    return cfg


def config_fingerprint(name: str, image_size: int | None) -> str:
    from omegaconf import OmegaConf

    cfg = load_model_config(name, image_size)
    return hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:16]


def build_sam2_model(
    config: str,
    checkpoint: str | Path | None,
    image_size: int | None = None,
    device: str = "cpu",
    allow_random: bool = False,
    seed: int = 0,
) -> Any:
    """Instantiate SAM2Base and load its weights. Raises on missing/mismatched checkpoints."""
    import torch
    from hydra.utils import instantiate

    cfg = load_model_config(config, image_size)
    if checkpoint is None and not allow_random:
        raise Sam2ConfigError(
            f"no SAM2 checkpoint given for config '{config}'; pass one, or allow random weights "
            "(model.allow_random_init=true) for a debug run"
        )
    devices = [torch.device(device)] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.to(device).eval()


def load_checkpoint(model, checkpoint: str | Path) -> None:
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise Sam2ConfigError(f"SAM2 checkpoint {path} cannot be read: {exc}") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise Sam2ConfigError(f"SAM2 checkpoint {path} holds no state dict under 'model'")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        first = str(exc).split("\n\t")[1:3]
        raise Sam2ConfigError(f"SAM2 checkpoint {path} does not match the config: {first}") from None
    if missing or unexpected:
        raise Sam2ConfigError(
            f"SAM2 checkpoint {path} does not match the config: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def materialize_random_checkpoint(
    config: str, image_size: int | None, out_dir: str | Path, seed: int = 0
) -> Path:
    """Write random weights for `config` once (atomic), so every actor loads the same ones."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = config_fingerprint(config, image_size)
    path = out_dir / f"sam2_random_{tag}_seed{seed}.pt"
    if path.exists():
        return path
    model = build_sam2_model(config, None, image_size, "cpu", allow_random=True, seed=seed)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


def build_tiny_sam2(cache_dir: str | Path = ".cache/videoseg", image_size: int = 256) -> Path:
    """The tiny SAM2's shared random checkpoint (built once per cache dir)."""
    return materialize_random_checkpoint(TINY, image_size, Path(cache_dir) / "sam2_tiny", seed=0)


def sam2_from_model_config(model_cfg, device: str = "cpu") -> Any:
    """The SAM2 of a `configs.schema.ModelConfig`: its checkpoint, or shared random weights.

    Random weights are written once per (config, size) under `cache_dir`, so every reward actor
    and the learner build bit-identical models without shipping weights around.
    """
    ckpt = model_cfg.sam2_checkpoint
    if ckpt is None:
        if not model_cfg.allow_random_init:
            raise Sam2ConfigError("model.sam2_checkpoint is not set and model.allow_random_init is false")
        sub = "sam2_tiny" if model_cfg.sam2_config == TINY else "sam2_random"
        ckpt = materialize_random_checkpoint(model_cfg.sam2_config, model_cfg.sam2_image_size,
                                             Path(model_cfg.cache_dir) / sub, seed=0)
    return build_sam2_model(model_cfg.sam2_config, ckpt, model_cfg.sam2_image_size, device)


def autocast_context(device: str, bf16: bool):
    """A factory of autocast contexts: bf16 autocast on CUDA when asked, else a no-op (fp32)."""
    import contextlib

    import torch

    if bf16 and str(device).startswith("cuda"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def build_video_predictor(config: str, checkpoint: str | Path, image_size: int | None = None,
                          device: str = "cpu") -> Any:
    """sam2's own SAM2VideoPredictor from the same config and weights (the benchmark baseline).

    Hole filling is switched off: it needs sam2's optional CUDA extension, which the wheels built
    with SAM2_BUILD_CUDA=0 do not have.
    """
    import torch
    from hydra.utils import instantiate

    cfg = load_model_config(config, image_size, extra=[
        "model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
        "model.binarize_mask_from_pts_for_mem_enc=true",
        "model.fill_hole_area=0",
    ])
    with torch.random.fork_rng(devices=[]):
        model = instantiate(cfg.model, _recursive_=True)
    load_checkpoint(model, checkpoint)
    return model.to(device).eval()
