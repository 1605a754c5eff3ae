"""Binary masks on disk and in JSON: PNG files and COCO run-length encoding (pycocotools)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask


class MaskFormatError(ValueError):
    pass


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a binary HxW mask with `counts` as str (what JSON files hold)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskFormatError(f"RLE encodes one HxW mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8) != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """HxW bool mask from a COCO RLE dict (`counts` as str or bytes; uncompressed lists too)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise MaskFormatError(f"not a COCO RLE dict: {str(rle)[:80]}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        obj = coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        out = coco_mask.decode(obj)
    except Exception as exc:  # pycocotools raises bare errors on corrupt strings
        raise MaskFormatError(f"RLE of size {h}x{w} does not decode: {exc}") from None
    return out.astype(bool)


def read_label_png(path: str | Path) -> np.ndarray:
    """The label values of a PNG: palette indices for 'P' images, grey levels otherwise."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L", "1", "I", "I;16"):
                arr = np.array(img)
            else:  # RGB(A) or LA: fall back to a grey conversion, nonzero still means foreground
                arr = np.array(img.convert("L"))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise MaskFormatError(f"{path} is not a readable PNG mask: {exc}") from None
    if arr.ndim != 2:
        raise MaskFormatError(f"{path} has shape {arr.shape}; expected a single-channel mask")
    return arr


def read_binary_png(path: str | Path) -> np.ndarray:
    """Any nonzero pixel is foreground (the MeViS/ReVOS convention)."""
    return read_label_png(path) != 0


def write_binary_png(path: str | Path, mask: np.ndarray, value: int = 255) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * np.uint8(value)).save(path)
