"""From trajectories to padded tensors, and micro-batches bounded by a token budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rollout.mm_inputs import build_mm_inputs
from rollout.trajectory import Trajectory


@dataclass
class MicroBatch:
    index: list[int]  # positions of these trajectories in the caller's list
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T)
    behaviour_logp: torch.Tensor  # (B, T)
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    seg_rows: torch.Tensor  # (S,) batch row of every turn that has a [SEG]
    seg_cols: torch.Tensor  # (S,) its position
    seg_turns: list[tuple[int, int]]  # (trajectory index in caller's list, turn index) per [SEG]

    def to(self, device) -> "MicroBatch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return MicroBatch(self.index, *(move(getattr(self, f)) for f in (
            "input_ids", "attention_mask", "loss_mask", "behaviour_logp", "pixel_values", "image_grid_thw",
            "seg_rows", "seg_cols")), self.seg_turns)


def plan_micro_batches(lengths: list[int], token_budget: int, min_batches: int = 1) -> list[list[int]]:
    """Group sequence indices so each group's padded size (count x longest) fits the budget.

    Sorting by length keeps padding low; a sequence longer than the budget gets a group of its own.
    `min_batches` splits further so data-parallel ranks can run the same number of micro-batches."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    while len(groups) < min_batches:
        splittable = [g for g in groups if len(g) > 1]
        if not splittable:
            break
        big = max(splittable, key=len)
        groups.remove(big)
        groups += [big[: len(big) // 2], big[len(big) // 2:]]
    return groups


def collate(trajs: list[Trajectory], index: list[int], images: list[list[np.ndarray]], image_processor,
            pad_id: int, image_pad_id: int) -> MicroBatch:
    """Right-padded tensors for the trajectories at `index` (images given per trajectory, in order)."""
    picked = [trajs[i] for i in index]
    longest = max(len(t.token_ids) for t in picked)
    b = len(picked)
    ids = torch.full((b, longest), pad_id, dtype=torch.long)
    attn = torch.zeros((b, longest), dtype=torch.long)
    lmask = torch.zeros((b, longest), dtype=torch.float32)
    blogp = torch.zeros((b, longest), dtype=torch.float32)
    all_images, rows, cols, turns = [], [], [], []
    for r, (i, t) in enumerate(zip(index, picked)):
        n = len(t.token_ids)
        ids[r, :n] = torch.tensor(t.token_ids)
        attn[r, :n] = 1
        lmask[r, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        blogp[r, :n] = torch.tensor(t.logprobs, dtype=torch.float32)
        all_images += list(images[r])
        for k, turn in enumerate(t.turns):
            if turn.seg_position >= 0:
                rows.append(r)
                cols.append(turn.seg_position)
                turns.append((i, k))
    mm = build_mm_inputs(image_processor, all_images, ids[attn.bool()].tolist(), image_pad_id) if all_images else {}
    return MicroBatch(
        index=list(index), input_ids=ids, attention_mask=attn, loss_mask=lmask, behaviour_logp=blogp,
        pixel_values=mm.get("pixel_values"), image_grid_thw=mm.get("image_grid_thw"),
        seg_rows=torch.tensor(rows, dtype=torch.long), seg_cols=torch.tensor(cols, dtype=torch.long),
        seg_turns=turns,
    )
