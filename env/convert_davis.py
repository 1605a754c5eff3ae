"""Convert a DAVIS-style folder (palette PNG annotations) into the ReVOS / MeViS layout.

Input (e.g. ../shared/test_data/davis16):
    SRC/JPEGImages/480p/<seq>/<frame>.jpg
    SRC/Annotations/480p/<seq>/<frame>.png     palette PNG; pixel value = object id (0 = background;
                                                 DAVIS 2016 uses 255 for its single object)
    SRC/expressions.json                        {"videos": {seq: [{"exp": str, "type_id": int,
                                                 optional "obj_id": [ids]}]}}
Output: OUT/JPEGImages/<seq>/ (symlinks, or copies with --copy), meta_expressions.json,
mask_dict.json, mask_dict_foreground.json, so the real frames and masks go through the same
readers as ReVOS/MeViS data.

Usage: python -m env.convert_davis --src ../shared/test_data/davis16 --out DIR [--copy]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from env.synthetic import encode_rle


def _find_subdir(root: Path, name: str) -> Path:
    """DAVIS nests frames under a resolution folder (480p); accept either layout."""
    base = root / name
    if not base.is_dir():
        raise FileNotFoundError(f"{base} does not exist; is {root} a DAVIS folder?")
    res = base / "480p"
    return res if res.is_dir() else base


def _object_ids(label: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(label) if v != 0]


def convert(src: str | Path, out: str | Path, copy: bool = False) -> Path:
    src, out = Path(src), Path(out)
    jpeg_root = _find_subdir(src, "JPEGImages")
    anno_root = _find_subdir(src, "Annotations")
    expr_path = src / "expressions.json"
    if not expr_path.exists():
        raise FileNotFoundError(f"{expr_path} is missing: it lists the expressions per sequence")
    expressions = json.loads(expr_path.read_text())["videos"]
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    meta: dict = {"videos": {}}
    mask_dict: dict[str, list] = {}
    foreground: dict[str, dict] = {}
    for v, seq in enumerate(sorted(expressions)):
        frame_files = sorted((jpeg_root / seq).glob("*.jpg"))
        if not frame_files:
            raise FileNotFoundError(f"no frames for sequence '{seq}' under {jpeg_root / seq}")
        frames = [f.stem for f in frame_files]
        labels = []
        for name in frames:
            png = anno_root / seq / f"{name}.png"
            if not png.exists():
                raise FileNotFoundError(f"annotation {png} is missing for frame {name} of '{seq}'")
            labels.append(np.array(Image.open(png)))
        h, w = labels[0].shape[:2]
        values = sorted({o for lab in labels for o in _object_ids(lab)})
        # DAVIS 2016 marks its single object with 255; call it object 1 like DAVIS 2017 would.
        value_of = {1: values[0]} if len(values) == 1 else {val: val for val in values}
        obj_ids = sorted(value_of)
        anno_of = {}
        for k, obj in enumerate(obj_ids):
            anno_id = v * 1000 + k
            anno_of[obj] = anno_id
            per_frame = []
            for lab in labels:
                m = (lab == value_of[obj]).astype(np.uint8)
                per_frame.append(encode_rle(m) if m.any() else None)
            mask_dict[str(anno_id)] = per_frame
        foreground[seq] = {"masks_rle": [encode_rle((lab != 0).astype(np.uint8)) for lab in labels]}
        exps = {}
        for i, e in enumerate(expressions[seq]):
            # An expression without obj_id refers to every annotated object (DAVIS 2016: the one).
            wanted = e.get("obj_id") or obj_ids
            missing = [o for o in wanted if o not in anno_of]
            if missing:
                raise ValueError(f"expression {i} of '{seq}' names objects {missing} absent from its masks")
            exps[str(i)] = {
                "exp": e["exp"],
                "obj_id": list(wanted),
                "anno_id": [anno_of[o] for o in wanted],
                "type_id": int(e.get("type_id", 0)),
            }
        dest = out / "JPEGImages" / seq
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        if copy:
            shutil.copytree(jpeg_root / seq, dest)
        else:
            dest.symlink_to((jpeg_root / seq).resolve(), target_is_directory=True)
        meta["videos"][seq] = {"vid_id": v, "frames": frames, "height": int(h), "width": int(w),
                               "expressions": exps}
    (out / "meta_expressions.json").write_text(json.dumps(meta))
    (out / "mask_dict.json").write_text(json.dumps(mask_dict))
    (out / "mask_dict_foreground.json").write_text(json.dumps(foreground))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--copy", action="store_true", help="copy frames instead of symlinking them")
    args = ap.parse_args(argv)
    path = convert(args.src, args.out, args.copy)
    meta = json.loads((path / "meta_expressions.json").read_text())
    print(f"converted {len(meta['videos'])} sequences into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
