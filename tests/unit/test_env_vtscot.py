"""VTS-CoT cold-start records: built from a real episode, written, read back, validated, served."""

import copy
import json

import pytest

from configs.schema import QWEN_UNIT, DatasetSpec, EnvConfig
from env.datasets import load_dataset
from env.episode import EpisodeLogic
from env.errors import VTSCoTFormatError
from env.protocol import format_turn
from env.vtscot import VTSCoTRecord, read_vtscot, record_from_episode, write_vtscot

CFG = EnvConfig(initial_low_res_frames=4, low_res_pixels=2 * QWEN_UNIT, initial_high_res_frames=2,
                high_res_pixels=4 * QWEN_UNIT, select_reply_frames=3, keyframe_pixels=8 * QWEN_UNIT)


@pytest.fixture(scope="module")
def syn(synthetic_dir):
    return load_dataset(DatasetSpec(name="syn", format="revos", root=synthetic_dir))


def _episode(syn, sample, turns):
    logic = EpisodeLogic(CFG, {"syn": syn})
    res = logic.reset(sample, "cold-0")
    observations = [res.observation]
    for text in turns:
        res = logic.step(res.state, text)
        if res.observation is not None:
            observations.append(res.observation)
    return res.state, observations


def _record(syn, index=0):
    sample = syn.samples()[index]
    turns = [format_turn("Step 1 t. Step 2 s. Step 3 e. Action: look", "select", 2, 9, 5),
             format_turn("Step 1 t. Step 2 s. Step 3 e. Action: answer", "answer", 3, 8, 6)]
    state, observations = _episode(syn, sample, turns)
    return record_from_episode(state, observations, syn.frame_names(sample.video_id), {"generator": "test"})


def test_record_from_episode_has_every_field(syn):
    r = _record(syn)
    assert r.schema == "vtscot/1" and r.video == syn.samples()[0].video_id and len(r.frames) == 16
    assert [m["role"] for m in r.conversation] == ["system", "user", "assistant", "user", "assistant"]
    trace = [(t.action, t.start, t.end, t.keyframe) for t in r.trace]
    assert trace == [("select", 2, 9, 5), ("answer", 3, 8, 6)]
    assert [f.index for f in r.shown[0].frames] == [0, 5, 10, 15, 4, 12]
    assert [(f.index, f.pixels) for f in r.shown[1].frames] == [
        (2, CFG.low_res_pixels), (6, CFG.low_res_pixels), (9, CFG.low_res_pixels), (5, CFG.keyframe_pixels)]
    images = [p for p in r.conversation[3]["content"] if p["type"] == "image"]
    assert [(p["index"], p["pixels"]) for p in images] == [(f.index, f.pixels) for f in r.shown[1].frames]


def test_write_read_round_trip_and_dataset(tmp_path, syn, synthetic_dir):
    records = [_record(syn, 0), _record(syn, 1)]
    root = tmp_path / "cold"
    root.mkdir()
    (root / "JPEGImages").symlink_to(synthetic_dir / "JPEGImages", target_is_directory=True)
    (root / "mask_dict.json").symlink_to(synthetic_dir / "mask_dict.json")
    assert write_vtscot(records, root / "vtscot.jsonl") == 2
    back = list(read_vtscot(root / "vtscot.jsonl"))
    assert [b.to_dict() for b in back] == [r.to_dict() for r in records]
    (tmp_path / "list.json").write_text(json.dumps([r.to_dict() for r in records]))
    assert [b.sample_id for b in read_vtscot(tmp_path / "list.json")] == [r.sample_id for r in records]
    ds = load_dataset(DatasetSpec(name="cold", format="vtscot", root=root))
    s = ds.samples()[0]
    src = syn.samples()[0]
    assert s.sample_id == f"cold/{src.video_id}/{src.exp_id}" and s.presence == src.presence
    assert ds.record(s.sample_id).trace == records[0].trace
    assert (ds.gt_masks(s, [3]) == syn.gt_masks(src, [3])).all()
    assert ds.frames(s.video_id, [2])[0].shape == (64, 96, 3)


def _broken(record, edit):
    d = copy.deepcopy(record.to_dict())
    edit(d)
    return d


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(schema="vtscot/0"), "schema"),
    (lambda d: d.pop("trace"), "missing fields"),
    (lambda d: d["trace"][0].update(start=3), "does not match"),
    (lambda d: d["trace"].pop(), "trace entries"),
    (lambda d: d["conversation"].pop(), "pairs ending with the assistant"),
    (lambda d: d["conversation"][2].update(content="no grammar here"), "does not parse"),
    (lambda d: (d["conversation"][4].update(content=d["conversation"][2]["content"]),
                d["trace"][1].update(d["trace"][0], round=2)), "last assistant"),
    (lambda d: d["shown"][1]["frames"].pop(), "differ from shown"),
    (lambda d: d["conversation"][1]["content"].append({"type": "video"}), "content part"),
    (lambda d: d.update(frames=d["frames"][:5]), "outside the video"),
    (lambda d: d["shown"][0].update(turn=1), "differ from shown"),
])
def test_validation_rejects_inconsistent_records(syn, edit, match):
    with pytest.raises(VTSCoTFormatError, match=match):
        VTSCoTRecord.from_dict(_broken(_record(syn), edit))


def test_reader_names_the_bad_line(tmp_path, syn):
    good = json.dumps(_record(syn).to_dict())
    (tmp_path / "x.jsonl").write_text(good + "\n\n{oops\n")
    with pytest.raises(VTSCoTFormatError, match=r"x.jsonl:3: not valid JSON"):
        list(read_vtscot(tmp_path / "x.jsonl"))
    with pytest.raises(VTSCoTFormatError, match="does not exist"):
        list(read_vtscot(tmp_path / "none.jsonl"))


def test_only_answered_episodes_become_records(syn):
    sample = syn.samples()[0]
    state, observations = _episode(syn, sample, ["not a turn"])
    with pytest.raises(VTSCoTFormatError, match="malformed"):
        record_from_episode(state, observations, syn.frame_names(sample.video_id))
