"""From trajectories to padded tensors, and micro-batches bounded by a token budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.device_transfer import send_to_device
from rollout.mm_inputs import image_pad_runs
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
    image_index: torch.Tensor | None = None  # (n_images,) row of each image among the distinct ones
    unique_grid: torch.Tensor | None = None  # (n_distinct, 3) grids of the distinct images
    position_ids: torch.Tensor | None = None  # (3, B, T) multimodal RoPE positions (SegPolicy.rope_position_ids)

    def to(self, device) -> "MicroBatch":
        """On `device`, without stalling the host (send_to_device)."""
        move = lambda t: send_to_device(t, device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return MicroBatch(self.index, *(move(getattr(self, f)) for f in (
            "input_ids", "attention_mask", "loss_mask", "behaviour_logp", "pixel_values", "image_grid_thw",
            "seg_rows", "seg_cols")), self.seg_turns, move(self.image_index), move(self.unique_grid),
            move(self.position_ids))


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


def collate(trajs: list[Trajectory], index: list[int], pieces: list[list[tuple]], merge: int,
            pad_id: int, image_pad_id: int) -> MicroBatch:
    """Right-padded tensors for the trajectories at `index`.

    `pieces[r]` holds, for the r-th of them, one (key, pixel rows, grid_thw) triple per image in
    order, as the image processor produced them; each image's token count is checked against its
    run of image pads, so vision inputs can never drift from the token ids. `pixel_values` holds
    each distinct image (by key) once; `image_index` maps every image slot to its row, so the
    vision tower encodes frames shared by a group's rollouts once."""
    picked = [trajs[i] for i in index]
    longest = max(len(t.token_ids) for t in picked)
    b = len(picked)
    ids = torch.full((b, longest), pad_id, dtype=torch.long)
    attn = torch.zeros((b, longest), dtype=torch.long)
    lmask = torch.zeros((b, longest), dtype=torch.float32)
    blogp = torch.zeros((b, longest), dtype=torch.float32)
    pixel_rows, grids, rows, cols, turns = [], [], [], [], []
    unique: dict[str, int] = {}
    unique_grids, image_index = [], []
    for r, (i, t) in enumerate(zip(index, picked)):
        n = len(t.token_ids)
        ids[r, :n] = torch.tensor(t.token_ids)
        attn[r, :n] = 1
        lmask[r, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        blogp[r, :n] = torch.tensor(t.logprobs, dtype=torch.float32)
        runs = image_pad_runs(t.token_ids, image_pad_id)
        expected = [int(g.prod()) // (merge * merge) for _, _, g in pieces[r]]
        if runs != expected:
            raise ValueError(f"{t.traj_id}: image token runs {runs} do not match the processed images {expected}")
        for key, pv, g in pieces[r]:
            if key not in unique:
                unique[key] = len(unique)
                pixel_rows.append(pv)
                unique_grids.append(g)
            image_index.append(unique[key])
            grids.append(g)
        for k, turn in enumerate(t.turns):
            if turn.seg_position >= 0:
                rows.append(r)
                cols.append(turn.seg_position)
                turns.append((i, k))
    return MicroBatch(
        index=list(index), input_ids=ids, attention_mask=attn, loss_mask=lmask, behaviour_logp=blogp,
        pixel_values=torch.cat(pixel_rows) if pixel_rows else None,
        image_grid_thw=torch.stack(grids) if grids else None,
        seg_rows=torch.tensor(rows, dtype=torch.long), seg_cols=torch.tensor(cols, dtype=torch.long),
        seg_turns=turns,
        image_index=torch.tensor(image_index, dtype=torch.long) if grids else None,
        unique_grid=torch.stack(unique_grids) if grids else None,
    )


class Collator:
    """Trajectories to a device-ready micro-batch for one policy: processed frames (cached), padded
    tokens, the multimodal RoPE positions computed on the host, then one transfer to the device."""

    def __init__(self, processor, rope_position_ids, device: str, dtype: torch.dtype, frame_fetcher=None):
        tok = processor.tokenizer
        self.image_processor = processor.image_processor
        self.image_pieces = ImagePieces(self.image_processor)
        self.merge = int(self.image_processor.merge_size)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self.image_pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
        self.rope_position_ids = rope_position_ids
        self.device, self.dtype = device, dtype
        self.frame_fetcher = frame_fetcher

    def __call__(self, trajs: list[Trajectory], index: list[int]) -> MicroBatch:
        pieces = [self.image_pieces.get(trajs[i].frames, self.frame_fetcher) if trajs[i].frames else []
                  for i in index]
        mb = collate(trajs, index, pieces, self.merge, self.pad_id, self.image_pad_id)
        mb.position_ids = self.rope_position_ids(mb.input_ids, mb.attention_mask, mb.image_grid_thw)
        mb = mb.to(self.device)
        if mb.pixel_values is not None:
            mb.pixel_values = mb.pixel_values.to(self.dtype)
        return mb


class ImagePieces:
    """Processed vision inputs per frame, computed once: the G rollouts of a group (and later turns)
    show the same frames, and the score pass and the train pass need them again."""

    def __init__(self, image_processor, capacity: int = 8192):
        self.proc = image_processor
        self.capacity = capacity
        self.cache: dict[str, tuple] = {}

    def get(self, refs: list, fetch) -> list[tuple]:
        missing = [r for r in dict.fromkeys(refs, None) if r.key not in self.cache]
        if missing:
            for ref, img in zip(missing, fetch(missing)):
                out = self.proc(images=[img], return_tensors="pt")
                self.cache[ref.key] = (out["pixel_values"], out["image_grid_thw"][0])
            while len(self.cache) > self.capacity:
                self.cache.pop(next(iter(self.cache)))
        return [(r.key, *self.cache[r.key]) for r in refs]
