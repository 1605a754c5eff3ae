"""Vision inputs for a trajectory's token ids, under the pinned processor configuration.

The learner needs `pixel_values` and `image_grid_thw` that match the image pads vLLM expanded. This
runs the HF image processor on the trajectory's images and checks, image by image, that each run of
`<|image_pad|>` tokens has exactly the length the processor implies; any mismatch is an error, never
a silent misalignment.
"""

from __future__ import annotations


def image_pad_runs(token_ids, image_pad_id: int) -> list[int]:
    runs, current = [], 0
    for t in token_ids:
        if t == image_pad_id:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def build_mm_inputs(image_processor, images: list, token_ids, image_pad_id: int) -> dict:
    runs = image_pad_runs(token_ids, image_pad_id)
    if len(runs) != len(images):
        raise ValueError(f"{len(runs)} image slots in the token ids but {len(images)} images")
    if not images:
        return {}
    out = image_processor(images=images, return_tensors="pt")
    grid = out["image_grid_thw"]
    merge = int(image_processor.merge_size)
    expected = (grid.prod(-1) // (merge * merge)).tolist()
    if runs != expected:
        raise ValueError(f"image token counts differ between the engine {runs} and the processor {expected}")
    # Modality per token (1 = image) for multimodal RoPE, shaped like a one-sequence batch.
    types = [[1 if t == image_pad_id else 0 for t in token_ids]]
    return {"pixel_values": out["pixel_values"], "image_grid_thw": grid, "mm_token_type_ids": types}
