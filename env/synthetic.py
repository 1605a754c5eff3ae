"""Synthetic reasoning-VOS data written in the real ReVOS / MeViS layout.

Each video shows a few coloured shapes on a textured background. Shapes move, some enter late and
some leave early, so temporal grounding matters: "the shape that leaves first" can only be
answered by looking at the right interval. Output layout (identical to ReVOS):

    OUT/JPEGImages/<video>/<frame>.jpg        (or OUT/JPEGImages/<video>.mp4 with --mp4)
    OUT/meta_expressions.json                 {"videos": {vid: {frames, height, width, expressions}}}
    OUT/mask_dict.json                        {anno_id: [COCO RLE or null per frame]}
    OUT/mask_dict_foreground.json             {vid: {"masks_rle": [RLE per frame]}}

Usage: python -m env.synthetic --out DIR --videos N --seed S [--frames F] [--size H W] [--mp4]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
SHAPES = ("square", "circle", "triangle")
SPEED_WORDS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class ShapeTrack:
    obj_id: int
    color: str
    shape: str
    size: int  # half-extent in pixels
    start_xy: tuple[float, float]
    velocity: tuple[float, float]  # pixels per frame
    appear: int  # first visible frame
    disappear: int  # first frame after the last visible one
    direction: str = "still"
    masks: list[np.ndarray] = field(default_factory=list)

    def centre(self, t: int) -> tuple[float, float]:
        return (self.start_xy[0] + self.velocity[0] * t, self.start_xy[1] + self.velocity[1] * t)

    @property
    def speed(self) -> float:
        return math.hypot(*self.velocity)


def _draw_shape(canvas: ImageDraw.ImageDraw, track: ShapeTrack, t: int, fill) -> None:
    cx, cy = track.centre(t)
    r = track.size
    box = (cx - r, cy - r, cx + r, cy + r)
    if track.shape == "square":
        canvas.rectangle(box, fill=fill)
    elif track.shape == "circle":
        canvas.ellipse(box, fill=fill)
    else:
        canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(30, 110, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = (xx / max(w - 1, 1))[..., None] * rng.integers(-40, 40, size=3)
    noise = rng.normal(0, 6, size=(h, w, 3))
    return np.clip(base + grad + noise, 0, 255).astype(np.uint8)


def _make_tracks(rng: np.random.Generator, n_frames: int, h: int, w: int) -> list[ShapeTrack]:
    n_obj = int(rng.integers(2, 5))
    colors = rng.choice(list(COLORS), size=n_obj, replace=False)
    tracks = []
    for i in range(n_obj):
        size = int(rng.integers(max(4, min(h, w) // 14), max(6, min(h, w) // 6)))
        direction = str(rng.choice(list(SPEED_WORDS) + ["still"]))
        speed = float(rng.uniform(0.8, 2.5)) if direction != "still" else 0.0
        dx, dy = SPEED_WORDS.get(direction, (0, 0))
        start = (float(rng.uniform(size, w - size)), float(rng.uniform(size, h - size)))
        # Temporal structure: about half the shapes enter late or leave early.
        appear, disappear = 0, n_frames
        if rng.random() < 0.35:
            appear = int(rng.integers(1, n_frames // 2))
        if rng.random() < 0.35:
            disappear = int(rng.integers(max(appear + 3, n_frames // 2), n_frames))
        tracks.append(
            ShapeTrack(
                obj_id=i + 1,
                color=str(colors[i]),
                shape=str(rng.choice(SHAPES)),
                size=size,
                start_xy=start,
                velocity=(dx * speed, dy * speed),
                appear=appear,
                disappear=disappear,
                direction=direction,
            )
        )
    return tracks


def _render(rng, tracks, n_frames, h, w) -> list[np.ndarray]:
    """Draw all frames; each track's masks are its VISIBLE pixels (later shapes occlude earlier)."""
    bg = _background(rng, h, w)
    frames = []
    for track in tracks:
        track.masks = []
    for t in range(n_frames):
        img = Image.fromarray(bg.copy())
        draw = ImageDraw.Draw(img)
        label = Image.new("L", (w, h), 0)
        label_draw = ImageDraw.Draw(label)
        for track in tracks:
            if track.appear <= t < track.disappear:
                _draw_shape(draw, track, t, COLORS[track.color])
                _draw_shape(label_draw, track, t, track.obj_id)
        lab = np.array(label)
        for track in tracks:
            track.masks.append((lab == track.obj_id).astype(np.uint8))
        frames.append(np.array(img))
    return frames


def _presence(track: ShapeTrack) -> list[bool]:
    return [bool(m.any()) for m in track.masks]


def _first_last(track: ShapeTrack) -> tuple[int, int]:
    idx = [t for t, p in enumerate(_presence(track)) if p]
    return (idx[0], idx[-1]) if idx else (-1, -1)


def _expressions(tracks: list[ShapeTrack], n_frames: int) -> list[dict]:
    """Referring (type 0) and reasoning (type 1) expressions that pick out exactly one target set."""
    visible = [t for t in tracks if any(_presence(t))]
    out: list[dict] = []

    def add(text: str, targets: list[ShapeTrack], type_id: int) -> None:
        if targets:
            out.append({"exp": text, "obj_id": [t.obj_id for t in targets], "type_id": type_id})

    for t in visible:
        motion = "staying still" if t.direction == "still" else f"moving {t.direction}"
        add(f"the {t.color} {t.shape} {motion}", [t], 0)
    shapes = {}
    for t in visible:
        shapes.setdefault(t.shape, []).append(t)
    for shape, group in shapes.items():
        if len(group) >= 2:
            add(f"all the {shape}s", group, 0)

    def unique_extreme(key, pick_max: bool):
        values = [key(t) for t in visible]
        best = max(values) if pick_max else min(values)
        winners = [t for t, v in zip(visible, values) if v == best]
        return winners[0] if len(winners) == 1 else None

    leaving = [t for t in visible if _first_last(t)[1] < n_frames - 1]
    if leaving:
        first_out = min(leaving, key=lambda t: _first_last(t)[1])
        if sum(_first_last(t)[1] == _first_last(first_out)[1] for t in leaving) == 1:
            add("the shape that leaves the scene first", [first_out], 1)
    late = [t for t in visible if _first_last(t)[0] > 0]
    if late:
        last_in = unique_extreme(lambda t: _first_last(t)[0], pick_max=True)
        if last_in is not None and last_in in late:
            add("which shape shows up last in the video?", [last_in], 1)
    moving = [t for t in visible if t.speed > 0]
    if len(moving) >= 2:
        fastest = unique_extreme(lambda t: t.speed, pick_max=True)
        if fastest is not None:
            add("the object that travels the farthest during the clip", [fastest], 1)
    if len(visible) >= 2:
        biggest = unique_extreme(lambda t: t.size, pick_max=True)
        if biggest is not None:
            add("the largest shape on screen", [biggest], 1)
        always = [t for t in visible if all(_presence(t))]
        if len(always) == 1:
            add("the only shape that is visible the whole time", always, 1)
    return out


def render_video(seed: int, index: int, frames: int, size: tuple[int, int]):
    """Frames (list of HxWx3 uint8) and shape tracks (with per-frame visible masks) of one video."""
    rng = np.random.default_rng([seed, index])
    h, w = size
    tracks = _make_tracks(rng, frames, h, w)
    return _render(rng, tracks, frames, h, w), tracks


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary HxW mask with `counts` as str (the JSON convention)."""
    from pycocotools import mask as mask_utils  # lazy: the word lists above are used without it

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open an mp4 writer for {path}")
    for frame in frames:
        writer.write(frame[:, :, ::-1])
    writer.release()


def generate(
    out: str | Path,
    videos: int = 16,
    seed: int = 0,
    frames: int = 24,
    size: tuple[int, int] = (96, 128),
    mp4: bool = False,
    jpeg_quality: int = 95,
) -> Path:
    """Write a synthetic dataset to `out`; returns the path. Deterministic for a given seed."""
    out = Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    h, w = size
    meta: dict = {"videos": {}}
    mask_dict: dict[str, list] = {}
    foreground: dict[str, dict] = {}
    for v in range(videos):
        vid = f"syn_{seed:04d}_{v:05d}"
        rendered, tracks = render_video(seed, v, frames, size)
        frame_names = [f"{t:05d}" for t in range(frames)]
        if mp4:
            _write_mp4(out / "JPEGImages" / f"{vid}.mp4", rendered)
        else:
            vdir = out / "JPEGImages" / vid
            vdir.mkdir(exist_ok=True)
            for name, img in zip(frame_names, rendered):
                Image.fromarray(img).save(vdir / f"{name}.jpg", quality=jpeg_quality)
        anno_of = {}
        for track in tracks:
            anno_id = v * 100 + track.obj_id
            anno_of[track.obj_id] = anno_id
            mask_dict[str(anno_id)] = [encode_rle(m) if m.any() else None for m in track.masks]
        union = [np.any([t.masks[i] for t in tracks], axis=0).astype(np.uint8) for i in range(frames)]
        foreground[vid] = {"masks_rle": [encode_rle(m) for m in union]}
        exps = {}
        for i, e in enumerate(_expressions(tracks, frames)):
            exps[str(i)] = {
                "exp": e["exp"],
                "obj_id": e["obj_id"],
                "anno_id": [anno_of[o] for o in e["obj_id"]],
                "type_id": e["type_id"],
            }
        meta["videos"][vid] = {
            "vid_id": v,
            "frames": frame_names,
            "height": h,
            "width": w,
            "expressions": exps,
        }
    (out / "meta_expressions.json").write_text(json.dumps(meta))
    (out / "mask_dict.json").write_text(json.dumps(mask_dict))
    (out / "mask_dict_foreground.json").write_text(json.dumps(foreground))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--mp4", action="store_true", help="write one mp4 per video instead of JPEG folders")
    args = ap.parse_args(argv)
    if args.videos < 1 or args.frames < 4:
        ap.error("--videos must be >= 1 and --frames >= 4")
    if min(args.size) < 32:
        ap.error("--size must be at least 32x32")
    path = generate(args.out, args.videos, args.seed, args.frames, tuple(args.size), args.mp4)
    meta = json.loads((path / "meta_expressions.json").read_text())
    n_exp = sum(len(v["expressions"]) for v in meta["videos"].values())
    print(f"wrote {len(meta['videos'])} videos, {n_exp} expressions to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
