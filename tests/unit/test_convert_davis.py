"""The real DAVIS sample converts into the ReVOS layout with pixel-exact masks."""

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def test_davis_conversion_is_pixel_exact(davis16_dir, davis_revos_dir):
    meta = json.loads((davis_revos_dir / "meta_expressions.json").read_text())
    masks = json.loads((davis_revos_dir / "mask_dict.json").read_text())
    assert set(meta["videos"]) == {"blackswan", "camel", "car-shadow", "dog", "libby"}
    video = meta["videos"]["camel"]
    assert len(video["frames"]) == 90 and (video["height"], video["width"]) == (480, 854)
    exp = video["expressions"]["0"]
    assert exp["obj_id"] == [1] and len(exp["anno_id"]) == 1
    per_frame = masks[str(exp["anno_id"][0])]
    for t in (0, 45, 89):
        png = np.array(Image.open(davis16_dir / "Annotations/480p/camel" / f"{t:05d}.png"))
        got = mask_utils.decode(per_frame[t]) if per_frame[t] else np.zeros_like(png)
        assert np.array_equal(got.astype(bool), png != 0)
    assert (davis_revos_dir / "JPEGImages" / "camel" / "00000.jpg").is_file()
    types = sorted(e["type_id"] for e in video["expressions"].values())
    assert types == [0, 1]
