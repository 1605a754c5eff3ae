"""`python -m segmentation.score`: DAVIS, MeViS and ReVOS layouts, PNG folders and RLE results."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segmentation.masks import decode_rle, encode_rle, read_binary_png, write_binary_png
from segmentation.evaluation import ScoreError
from segmentation.score import main, run

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "davis_toolkit_reference.json"


def test_rle_round_trip_and_errors():
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [5, 7]
    assert np.array_equal(decode_rle(rle), m)
    assert np.array_equal(decode_rle(json.loads(json.dumps(rle))), m)
    with pytest.raises(ValueError, match="RLE"):
        decode_rle({"size": [5]})


def test_davis_cli_writes_json(davis16_dir, tmp_path):
    out = tmp_path / "davis.json"
    rc = main(["--format", "davis", "--gt", str(davis16_dir), "--pred",
               str(davis16_dir / "osvos_predictions"), "--json", str(out), "--sequences", "blackswan",
               "car-shadow"])
    assert rc == 0
    res = json.loads(out.read_text())
    golden = json.loads(GOLDEN.read_text())["semi-supervised"]["per_object"]
    assert sorted(res["per_object"]) == ["blackswan_1", "car-shadow_1"]
    for name, o in res["per_object"].items():
        assert abs(o["J"] - golden[name]["J_M"]) < 1e-6 and abs(o["F"] - golden[name]["F_M"]) < 1e-6
        assert o["J&F"] == pytest.approx((o["J"] + o["F"]) / 2)
    j = np.mean([golden[n]["J_M"] for n in res["per_object"]])
    assert res["summary"]["J-Mean"] == pytest.approx(j, abs=1e-12)


def test_davis_cli_reports_missing_predictions(davis16_dir, tmp_path, capsys):
    rc = main(["--format", "davis", "--gt", str(davis16_dir), "--pred", str(tmp_path), "--json",
               str(tmp_path / "x.json")])
    assert rc == 2 and "predictions missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def osvos_as_expressions(davis_revos_dir, davis16_dir, tmp_path_factory):
    """OSVOS masks laid out per expression (PNG folders) and as a results.json of RLEs."""
    meta = json.loads((davis_revos_dir / "meta_expressions.json").read_text())["videos"]
    png_root = tmp_path_factory.mktemp("preds")
    results = {}
    for video, rec in meta.items():
        pred_dir = davis16_dir / "osvos_predictions" / video
        masks = [read_binary_png(pred_dir / f"{f}.png") for f in rec["frames"]]
        results[video] = {}
        for exp_id in rec["expressions"]:
            for f, m in zip(rec["frames"], masks):
                write_binary_png(png_root / video / exp_id / f"{f}.png", m)
            results[video][exp_id] = {"prediction_masks": [encode_rle(m) for m in masks]}
    rle_path = png_root.parent / "results.json"
    rle_path.write_text(json.dumps(results))
    return png_root, rle_path


def test_revos_and_mevis_loops_on_real_masks(davis_revos_dir, osvos_as_expressions):
    png_root, rle_path = osvos_as_expressions
    golden = json.loads(GOLDEN.read_text())["unsupervised"]["per_object"]  # all frames, same masks
    revos = run("revos", davis_revos_dir, png_root)
    assert len(revos["per_expression"]) == 10
    for key, e in revos["per_expression"].items():
        video = key.rsplit("_", 1)[0]
        assert abs(e["J"] - np.mean(golden[f"{video}_1"]["J"])) < 1e-6
        assert abs(e["F"] - np.mean(golden[f"{video}_1"]["F"])) < 1e-6
    seqs = ("blackswan", "camel", "car-shadow", "dog", "libby")
    j_all = np.mean([np.mean(golden[f"{v}_1"]["J"]) for v in seqs])
    s = revos["summary"]
    assert s["referring"]["J"] == pytest.approx(j_all) and s["reasoning"]["J"] == pytest.approx(j_all)
    assert s["overall"]["J"] == pytest.approx(j_all) and s["dropped_type_2"] == 0
    from_rle = run("revos", davis_revos_dir, rle_path)
    assert from_rle["per_expression"] == revos["per_expression"]
    mevis = run("mevis", davis_revos_dir, rle_path)
    assert mevis["summary"]["J"] == pytest.approx(j_all) and mevis["summary"]["count"] == 10


def _tiny_revos(root: Path) -> Path:
    """One scored video with three expression types and one video without predictions."""
    block = np.zeros((6, 6), bool)
    block[1:3, 1:3] = True
    meta = {"videos": {
        "v": {"frames": ["00000", "00001"], "height": 6, "width": 6, "expressions": {
            "0": {"exp": "a", "anno_id": [1], "type_id": 0},
            "1": {"exp": "b", "anno_id": [1], "type_id": 1},
            "2": {"exp": "c", "anno_id": [1], "type_id": 2}}},
        "w": {"frames": ["00000"], "height": 6, "width": 6, "expressions": {
            "0": {"exp": "d", "anno_id": [2], "type_id": 0}}}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    masks = {"1": [encode_rle(block), None], "2": [encode_rle(block)]}
    (root / "mask_dict.json").write_text(json.dumps(masks))
    pred = root / "pred"
    write_binary_png(pred / "v" / "0" / "00000.png", block)  # perfect: J = F = 1 on both frames
    write_binary_png(pred / "v" / "0" / "00001.png", np.zeros((6, 6)))
    write_binary_png(pred / "v" / "1" / "00000.png", np.zeros((6, 6)))  # misses frame 0: J = F = 0.5
    write_binary_png(pred / "v" / "1" / "00001.png", np.zeros((6, 6)))
    write_binary_png(pred / "v" / "2" / "00000.png", np.ones((6, 6)))  # type 2: never counted
    write_binary_png(pred / "v" / "2" / "00001.png", np.ones((6, 6)))
    return pred


def test_revos_type_handling_and_missing_video(tmp_path):
    pred = _tiny_revos(tmp_path / "gt")
    with pytest.warns(UserWarning, match="robustness R is not scored"):
        res = run("revos", tmp_path / "gt", pred)
    per = res["per_expression"]
    assert per["v_0"]["J"] == 1.0 and per["v_0"]["F"] == 1.0 and per["v_0"]["A"] == 1.0
    assert per["v_1"]["J"] == 0.5 and per["v_1"]["F"] == 0.5
    assert per["v_1"]["A"] == pytest.approx((32 / 36 + 1) / 2)  # 4 of 36 pixels wrong on frame 0
    assert per["w_0"] == {"J": 0.0, "F": 0.0, "J&F": 0.0, "A": 0.0, "type_id": 0, "note": "no predictions"}
    assert all("R" not in v for v in per.values())  # no mask_dict_foreground.json here
    s = res["summary"]
    assert s["referring"]["J"] == 0.5 and s["referring"]["count"] == 2  # v_0 = 1 and w_0 = 0
    assert s["reasoning"]["J"] == 0.5 and s["dropped_type_2"] == 1
    assert s["overall"] == pytest.approx({"J": 0.5, "F": 0.5, "J&F": 0.5, "A": (0.5 + (32 / 36 + 1) / 2) / 2})


def test_revos_robustness_uses_the_video_foreground(tmp_path):
    gt = tmp_path / "gt"
    pred = _tiny_revos(gt)
    fg0 = np.zeros((6, 6), bool)
    fg0[1:3, 1:5] = True  # the target's 4 pixels and 4 of another object: 8 foreground pixels
    fg = {"v": {"masks_rle": [encode_rle(fg0), None]}, "w": {"masks_rle": [[encode_rle(fg0), encode_rle(fg0)]]}}
    (gt / "mask_dict_foreground.json").write_text(json.dumps(fg))
    with_fp = np.zeros((6, 6), bool)
    with_fp[1:3, 1:3] = True
    with_fp[5, 4:6] = True  # 2 false-positive pixels
    write_binary_png(pred / "v" / "0" / "00000.png", with_fp)
    per = run("revos", gt, pred)["per_expression"]
    assert per["v_0"]["R"] == pytest.approx((1 - 2 / 8 + 1) / 2)  # frame 1: empty prediction -> 1
    assert per["v_1"]["R"] == pytest.approx(1.0) and per["w_0"]["R"] == 0.0
    s = run("revos", gt, pred)["summary"]
    assert s["referring"]["R"] == pytest.approx(0.875 / 2) and s["reasoning"]["R"] == pytest.approx(1.0)
    assert s["overall"]["R"] == pytest.approx((0.875 / 2 + 1) / 2)
    fg["v"]["masks_rle"] = [None]  # one entry for two frames
    (gt / "mask_dict_foreground.json").write_text(json.dumps(fg))
    with pytest.raises(ScoreError, match="1 masks_rle for 2 frames"):
        run("revos", gt, pred)


def test_missing_frame_png_scores_the_expression_zero_with_a_note(tmp_path):
    pred = _tiny_revos(tmp_path / "gt")
    (pred / "v" / "1" / "00001.png").unlink()
    with pytest.warns(UserWarning, match="scored 0"):
        res = run("revos", tmp_path / "gt", pred)
    assert res["per_expression"]["v_1"]["J"] == 0.0 and "missing" in res["per_expression"]["v_1"]["note"]


def test_mismatched_prediction_size_is_an_error_for_mevis(tmp_path):
    pred = _tiny_revos(tmp_path / "gt")
    shutil.copy(tmp_path / "gt" / "meta_expressions_valid_.json", tmp_path / "gt" / "meta_expressions.json")
    write_binary_png(pred / "v" / "0" / "00001.png", np.zeros((7, 6)))
    rc = main(["--format", "mevis", "--gt", str(tmp_path / "gt"), "--pred", str(pred), "--json",
               str(tmp_path / "m.json")])
    assert rc == 2
