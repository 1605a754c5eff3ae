"""What the learner does per repeated transformer block: compile it, and choose which blocks
recompute their activations in the backward pass (gradient checkpointing).

Compiling (learner.compile_blocks):

The H200 profile of a learner step (benchmarks/results/GPU_RUNS.md) is launch bound: between the
matrix products sit thousands of small element-wise kernels (RMSNorm, rotary, SiLU gating, dtype
casts), run again in the gradient-checkpoint recompute. Compiling each decoder layer and vision
block fuses them. Compiling per block rather than the whole model keeps compile time to one graph
per block class (the layers of a class share it), leaves the Python around the blocks (image
splicing, [SEG] heads, the loss) eager, and keeps HF gradient checkpointing wrapped around each
compiled block. Parameters and state-dict names do not change, so checkpoints and weight sync are
unaffected. The rollout engines (vLLM) and the frozen reference copy are not compiled here.

Checkpointing a fraction (learner.checkpoint_fraction): with every block checkpointed, the backward
pass runs each block's forward again. Where GPU memory is left over, keeping the activations of
some blocks skips their recompute; the kept ones are spread evenly through each stack so memory
grows evenly with the fraction kept.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)

# Class-name endings of the repeated blocks in the Qwen2-VL / Qwen2.5-VL / Qwen3-VL families.
BLOCK_SUFFIXES = ("DecoderLayer", "VisionBlock")
# All blocks run the same compiled code object (nn.Module._call_impl): each block class and shape
# variant, and in torch versions that guard on the module object each block, is one cache entry of
# it. Past the default limit (8) torch falls back to eager for the rest, silently.
RECOMPILE_LIMIT = 64


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers and vision blocks of `model`, outermost first; a block inside a block is
    not listed (compiling the outer one covers it)."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if type(module).__name__.endswith(BLOCK_SUFFIXES):
            blocks.append(module)
            inside.update(id(m) for m in module.modules())
    return blocks


def checkpoint_fraction(model: nn.Module, fraction: float) -> int:
    """Leave gradient checkpointing on for about `fraction` of each stack of blocks (decoder layers,
    vision blocks), evenly spaced, and off for the rest; returns how many stay checkpointed.
    Call after the model's gradient_checkpointing_enable()."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"learner.checkpoint_fraction must be in [0, 1], got {fraction}")
    stacks: dict[str, list[nn.Module]] = {}
    for block in repeated_blocks(model):
        stacks.setdefault(type(block).__name__, []).append(block)
    kept = 0
    for blocks in stacks.values():
        for i, block in enumerate(blocks):
            if not hasattr(block, "gradient_checkpointing"):
                raise ValueError(f"{type(block).__name__} has no gradient_checkpointing switch (transformers "
                                 "changed); leave learner.checkpoint_fraction at 1")
            # Block i is checkpointed when the running count floor((i + 1) * fraction) steps up.
            block.gradient_checkpointing = int((i + 1) * fraction) > int(i * fraction)
            kept += block.gradient_checkpointing
    return kept


def compile_blocks(model: nn.Module, dynamic: bool | None = None) -> int:
    """Compile every repeated block of `model` in place (nn.Module.compile); returns how many.

    Raises ValueError when the model has none, so a config asking for compilation never runs eager
    without saying so."""
    import torch._dynamo

    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no module whose class name ends in {BLOCK_SUFFIXES}; "
                         "set learner.compile_blocks=false")
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), RECOMPILE_LIMIT))
    for block in blocks:
        block.compile(dynamic=dynamic)
    kinds = sorted({type(b).__name__ for b in blocks})
    log.info("compiled %d blocks (%s)", len(blocks), ", ".join(kinds))
    return len(blocks)
