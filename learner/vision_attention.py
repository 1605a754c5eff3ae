"""Block-diagonal attention for the Qwen-VL vision towers in one call per distinct block length.

Without flash-attn, transformers' Qwen2.5-VL / Qwen3-VL vision attention splits the packed patch
sequence at `cu_seqlens` and runs one attention call per image (Qwen3-VL) or per window
(Qwen2.5-VL). A learner step encodes hundreds of frames, so the vision tower becomes thousands of
tiny kernel launches forward and backward (the H200 profile in benchmarks/results/GPU_RUNS.md).
Frames of one video share a resolution, so their blocks have equal lengths: stacking equal-length
blocks into a batch gives the same attention (each block still sees only itself) in a handful of
calls. Only the attention call changes; the projections and rotary embedding are the module's own.
"""

from __future__ import annotations

import sys
import types
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

# Vision attention classes whose forward(hidden_states, cu_seqlens, position_embeddings) packs
# blocks the same way; others are left to transformers.
SUPPORTED = ("Qwen2_5_VLVisionAttention", "Qwen3VLVisionAttention")


class BlockPlan:
    """How packed blocks group by length: `uniform` (one length for all non-empty blocks) or, per
    length, the token index of each group and the inverse order that puts tokens back in place."""

    def __init__(self, cu_seqlens: torch.Tensor, tokens: int, device: torch.device):
        bounds = cu_seqlens.tolist()  # waits for the GPU: once per plan, not once per block call
        if bounds[0] != 0 or bounds[-1] != tokens or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
            raise ValueError(f"cu_seqlens must rise from 0 to {tokens} tokens, got {bounds[:4]}...{bounds[-2:]}")
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        present = {n for n in lengths if n}
        self.tokens, self.device = tokens, device
        self.uniform = present.pop() if len(present) == 1 else None
        self.groups: list[tuple[int, int, torch.Tensor]] = []  # (length, blocks, token index)
        self.inverse: torch.Tensor | None = None
        if self.uniform is not None:
            return
        starts_by_length: dict[int, list[int]] = defaultdict(list)
        for start, n in zip(bounds[:-1], lengths):
            if n:
                starts_by_length[n].append(start)
        for n, starts in starts_by_length.items():
            index = (torch.tensor(starts, device=device)[:, None] + torch.arange(n, device=device)).reshape(-1)
            self.groups.append((n, len(starts), index))
        order = torch.cat([index for _, _, index in self.groups])
        self.inverse = torch.empty(tokens, dtype=torch.long, device=device)
        self.inverse[order] = torch.arange(tokens, device=device)


class _PlanCache:
    """The plans of the last few cu_seqlens tensors. Every block of a vision tower gets the same
    cu_seqlens tensor (Qwen2.5-VL: two, windows and full), and the checkpoint recompute passes it
    again, so without this each block call reads the bounds to the host: one GPU sync per block,
    forward and recompute (96 of a learner step's 246 on the H200). A hit needs the same memory,
    shape and in-place version; the cache holds the tensors, so their memory cannot be reused by
    another tensor while they are cached."""

    SIZE = 4

    def __init__(self):
        self._entries: list[tuple[torch.Tensor, int, BlockPlan]] = []

    @staticmethod
    def _same(a: torch.Tensor, b: torch.Tensor, version: int) -> bool:
        return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device and b._version == version)

    def get(self, cu_seqlens: torch.Tensor, tokens: int, device: torch.device) -> BlockPlan:
        for cached, version, plan in self._entries:
            if plan.tokens == tokens and plan.device == device and self._same(cached, cu_seqlens, version):
                return plan
        plan = BlockPlan(cu_seqlens, tokens, device)
        self._entries = [(cu_seqlens, cu_seqlens._version, plan)] + self._entries[: self.SIZE - 1]
        return plan

    def clear(self) -> None:
        self._entries = []


PLANS = _PlanCache()


# Eager on purpose: the plan is Python state read once per cu_seqlens tensor, which a compiled
# block (learner.compile_blocks) could only guard on value by value; the projections and rotary
# around this call still compile.
@torch.compiler.disable
def block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """Attention of packed blocks, each attending only to itself.

    q, k, v: (tokens, heads, head_dim) with block i spanning cu_seqlens[i]:cu_seqlens[i+1].
    Returns (tokens, heads, head_dim). Blocks of equal length go through one SDPA call together.
    """
    tokens, heads, dim = q.shape
    plan = PLANS.get(cu_seqlens, tokens, q.device)
    if plan.uniform is not None:  # every block the same length: a reshape, no gather
        n = plan.uniform
        blocks = [t.reshape(tokens // n, n, heads, dim).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*blocks, scale=scale)
        return out.transpose(1, 2).reshape(tokens, heads, dim)
    pieces = []
    for n, count, index in plan.groups:
        blocks = [t.index_select(0, index).reshape(count, n, heads, dim).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*blocks, scale=scale)
        pieces.append(out.transpose(1, 2).reshape(-1, heads, dim))
    # Put each token back at its packed position.
    return torch.cat(pieces).index_select(0, plan.inverse)


def _batched_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
    tokens = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(tokens, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = self._apply_rotary(q, k, cos, sin)
    out = block_diagonal_attention(q, k, v, cu_seqlens, self.scaling)
    return self.proj(out.reshape(tokens, -1))


def batch_vision_attention(model: nn.Module) -> int:
    """Route every supported vision attention module of `model` through block_diagonal_attention.

    Returns how many modules were changed (0 for a model with no supported vision tower). Modules
    configured for flash-attn keep transformers' varlen path, which is already one call per layer.
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__ not in SUPPORTED or "flash" in str(module.config._attn_implementation or ""):
            continue
        rotary = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb_vision", None)
        if rotary is None or not all(hasattr(module, a) for a in ("qkv", "proj", "num_heads", "scaling")):
            raise RuntimeError(f"{type(module).__name__} no longer has the layout batch_vision_attention expects "
                               "(transformers changed); set model.vision_attention=per_block")
        module._apply_rotary = rotary
        module.forward = types.MethodType(_batched_forward, module)
        changed += 1
    return changed
