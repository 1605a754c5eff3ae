"""The one pinned image-processor configuration shared by vLLM (rollout) and HF (learner).

Image token counts must be identical on both sides, or the learner trains on different positions
than the engine sampled. The environment already resizes frames to METHOD.md's pixel budgets; the
processor then only rounds each side to its patch grid (28 px for Qwen2.5-VL, 32 px for Qwen3-VL).
Its min/max are therefore set wide enough never to rescale a budgeted frame a second time.
"""

from __future__ import annotations

# Smallest image the processor lets through unchanged: 4 merged patches.
MIN_PIXELS = 4 * 28 * 28
# Above the largest budget used anywhere (evaluation keyframes: 512 * 28 * 28).
MAX_PIXELS = 1280 * 28 * 28

PATCH_SIZE = {"qwen2.5-vl": 14, "qwen3-vl": 16}
MERGE_SIZE = 2


def family_of_model_type(model_type: str) -> str:
    if model_type in ("qwen2_5_vl", "qwen2_vl"):
        return "qwen2.5-vl"
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        return "qwen3-vl"
    raise ValueError(f"unsupported policy model_type '{model_type}' (expected Qwen2.5-VL or Qwen3-VL)")


def pinned_image_processor_kwargs(family: str) -> dict:
    patch = PATCH_SIZE[family]
    factor = patch * MERGE_SIZE
    # Qwen3-VL rounds to 32 px; keep the same bounds expressed in its own grid.
    min_pixels = 4 * factor * factor
    return {
        "min_pixels": min_pixels,
        "max_pixels": MAX_PIXELS,
        "patch_size": patch,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
    }


def mm_processor_kwargs(family: str) -> dict:
    """What vLLM's multimodal processor is told, so it resizes exactly like the HF processor."""
    kw = pinned_image_processor_kwargs(family)
    return {"size": {"shortest_edge": kw["min_pixels"], "longest_edge": kw["max_pixels"]}}


def image_token_count(height: int, width: int, family: str) -> int:
    """Tokens one image of this size becomes in the LLM, under the pinned processor settings."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    kw = pinned_image_processor_kwargs(family)
    factor = kw["patch_size"] * kw["merge_size"]
    h, w = smart_resize(height, width, factor=factor, min_pixels=kw["min_pixels"], max_pixels=kw["max_pixels"])
    return (h // factor) * (w // factor)
