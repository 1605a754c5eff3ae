"""Mask encodings used by the datasets: COCO RLE (mask_dict.json) and palette PNGs.

Everything returns bool arrays of the frame's original size. Malformed input becomes an
`AnnotationError` that names the annotation, not a pycocotools or PIL exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from env.errors import AnnotationError, MissingAnnotationError


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary HxW mask, `counts` as str (how mask_dict.json stores it)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _rle_size(rle: dict, where: str) -> list[int]:
    size = rle["size"]
    try:
        if isinstance(size, (str, bytes)) or len(size) != 2:
            raise ValueError("not a pair")
        h, w = (int(v) for v in size)
        if h <= 0 or w <= 0 or any(isinstance(v, bool) or float(v) != int(v) for v in size):
            raise ValueError("not positive integers")
    except (TypeError, ValueError, OverflowError) as exc:
        raise AnnotationError(f"{where}: RLE size must be [height, width], got {size!r:.60} ({exc})") from None
    return [h, w]


def _as_coco(rle: dict, where: str) -> dict:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise AnnotationError(f"{where}: expected a COCO RLE dict with 'size' and 'counts', got {rle!r:.80}")
    size = _rle_size(rle, where)
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (rare in these datasets): compress it first
        try:
            return mask_utils.frPyObjects(rle, size[0], size[1])
        except Exception as exc:
            raise AnnotationError(f"{where}: bad uncompressed RLE ({exc})") from exc
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii", errors="strict")
        except UnicodeEncodeError:
            raise AnnotationError(f"{where}: RLE counts hold non-ASCII characters") from None
    if not isinstance(counts, bytes):
        raise AnnotationError(f"{where}: RLE counts must be a string, got {type(counts).__name__}")
    return {"size": size, "counts": counts}


def decode_rle(rle: dict | None, size: tuple[int, int], where: str = "mask") -> np.ndarray:
    """Decode one RLE (or None = absent) into a bool HxW mask of the given frame size."""
    h, w = size
    if rle is None:
        return np.zeros((h, w), dtype=bool)
    coco = _as_coco(rle, where)
    if tuple(coco["size"]) != (h, w):
        raise AnnotationError(f"{where}: RLE size {tuple(coco['size'])} differs from the frame size {(h, w)}")
    try:
        return mask_utils.decode(coco).astype(bool)
    except Exception as exc:
        raise AnnotationError(f"{where}: RLE does not decode ({exc})") from exc


def rle_area(rle: dict | None, where: str = "mask") -> int:
    """Foreground pixel count without decoding the whole mask."""
    if rle is None:
        return 0
    try:
        return int(mask_utils.area(_as_coco(rle, where)))
    except AnnotationError:
        raise
    except Exception as exc:
        raise AnnotationError(f"{where}: RLE area failed ({exc})") from exc


def foreground_areas(per_frame: list, where: str = "foreground") -> np.ndarray:
    """Per-frame pixel counts of a ReVOS foreground track (mask_dict_foreground.json's `masks_rle`:
    an RLE, a list of RLEs or null per frame). The channels of one frame are summed, as the ReVOS
    script sums a multi-channel mask, so overlapping objects count once per object."""
    return np.array([sum(rle_area(part, f"{where} frame {t}")
                         for part in (rle if isinstance(rle, list) else [rle]))
                     for t, rle in enumerate(per_frame)], dtype=np.float64)


def read_label_png(path: Path) -> np.ndarray:
    """Pixel values of a palette (or grey) annotation PNG as a 2-D integer array."""
    path = Path(path)
    if not path.is_file():
        raise MissingAnnotationError(f"annotation {path} does not exist")
    try:
        with Image.open(path) as im:
            # Palette PNGs keep their indices in mode "P"; never convert those to RGB.
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as exc:
        raise AnnotationError(f"annotation {path} is not a readable PNG ({exc})") from exc
    if arr.ndim != 2:
        raise AnnotationError(f"annotation {path} has shape {arr.shape}, expected a 2-D label map")
    return arr
