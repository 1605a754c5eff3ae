"""The trajectory: everything the learner and the reward pool need about one episode.

Plain dataclasses, picklable for Ray, and convertible to an Arrow table (one row per trajectory)
for logging, replay and debugging. Token ids are in the *expanded* form (image pads expanded to
their token counts), exactly what the engine attended to and what the learner will train on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from env.types import Action, EndReason, EpisodeState, FrameRef, ParseError, Sample, TurnRecord


@dataclass
class TurnTrace:
    """One assistant turn: where it sits in the token sequence and what it did."""

    start: int  # index of the first sampled token in Trajectory.token_ids
    end: int  # one past the last sampled token
    seg_position: int  # index of the [SEG] token used for this turn's mask, -1 if none
    num_seg_tokens: int
    keyframe_seen: int  # frame whose high-res view the model had (reward keyframe)
    num_images_before: int  # images in the context when this turn was sampled
    policy_version: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache
    prompt_tokens: int
    finish_reason: str
    gen_seconds: float
    record: TurnRecord


@dataclass
class Trajectory:
    traj_id: str  # "<sample_id>#<group_index>@<rollout_step>"
    sample: Sample
    group_index: int
    token_ids: list[int]
    loss_mask: list[int]  # 1 on sampled tokens, 0 on prompt and environment tokens
    logprobs: list[float]  # sampled-token log-probs (0.0 where loss_mask is 0)
    frames: list[FrameRef]  # every image in order of appearance
    turns: list[TurnTrace]
    initial_high: list[int]  # the K detail frames of turn 0 ("sampled frames" of the reward)
    initial_low: list[int]
    end_reason: EndReason | str
    prompt_length: int  # tokens before the first sampled token
    rollout_step: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # Set when the episode could not be played because the sample's data is unusable (the env
    # raised a DataError); such a trajectory has no turns and is quarantined, never trained on.
    error: str = ""

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def num_generated(self) -> int:
        return int(sum(self.loss_mask))

    def episode_state(self) -> EpisodeState:
        """The finished episode as the environment would describe it (for the reward pool)."""
        return EpisodeState(sample=self.sample, episode_id=self.traj_id, initial_low=list(self.initial_low),
                            initial_high=list(self.initial_high), turns=[t.record for t in self.turns],
                            done=True, end_reason=self.end_reason)

    def check(self) -> None:
        """Internal consistency; raises AssertionError with the first violation."""
        n = len(self.token_ids)
        assert len(self.loss_mask) == n and len(self.logprobs) == n, "per-token arrays differ in length"
        assert sum(self.loss_mask[: self.prompt_length]) == 0, "prompt tokens carry loss"
        covered = 0
        for t in self.turns:
            assert 0 <= t.start <= t.end <= n, f"turn span {t.start}:{t.end} outside sequence"
            assert all(self.loss_mask[t.start:t.end]), "sampled turn tokens must carry loss"
            covered += t.end - t.start
            if t.seg_position >= 0:
                assert t.start <= t.seg_position < t.end, "[SEG] outside its turn"
        assert covered == sum(self.loss_mask), "loss mask covers tokens outside sampled turns"


# ------------------------------------------------------------------------------- Arrow I/O
def _action_to_dict(a: Action | None):
    return None if a is None else asdict(a)


def _error_to_dict(e: ParseError | None):
    return None if e is None else asdict(e)


def _turn_record_from_dict(d: dict) -> TurnRecord:
    action = d.get("action")
    error = d.get("error")
    return TurnRecord(
        text=d["text"],
        action=None if action is None else Action(
            **{**action, "step_markers": tuple(action["step_markers"])}),
        error=None if error is None else ParseError(
            **{**error, "step_markers": tuple(error["step_markers"])}),
        clamped=None if d.get("clamped") is None else tuple(d["clamped"]),
        keyframe_seen=d.get("keyframe_seen", -1),
        shown=[FrameRef(**f) for f in d.get("shown", [])],
    )


def _turn_to_dict(t: TurnTrace) -> dict:
    d = asdict(t)
    d["record"] = {
        "text": t.record.text,
        "action": _action_to_dict(t.record.action),
        "error": _error_to_dict(t.record.error),
        "clamped": t.record.clamped,
        "keyframe_seen": t.record.keyframe_seen,
        "shown": [asdict(f) for f in t.record.shown],
    }
    return d


def to_arrow(trajectories: list[Trajectory]):
    """One row per trajectory; nested structures as JSON strings (schema-stable across versions)."""
    import pyarrow as pa

    rows = {
        "traj_id": [t.traj_id for t in trajectories],
        "sample_id": [t.sample.sample_id for t in trajectories],
        "group_index": [t.group_index for t in trajectories],
        "rollout_step": [t.rollout_step for t in trajectories],
        "end_reason": [str(t.end_reason) for t in trajectories],
        "prompt_length": [t.prompt_length for t in trajectories],
        "token_ids": [t.token_ids for t in trajectories],
        "loss_mask": [[int(x) for x in t.loss_mask] for t in trajectories],
        "logprobs": [[float(x) for x in t.logprobs] for t in trajectories],
        "initial_high": [t.initial_high for t in trajectories],
        "initial_low": [t.initial_low for t in trajectories],
        "sample": [json.dumps(t.sample.to_dict()) for t in trajectories],
        "frames": [json.dumps([asdict(f) for f in t.frames]) for t in trajectories],
        "turns": [json.dumps([_turn_to_dict(x) for x in t.turns]) for t in trajectories],
        "timings": [json.dumps(t.timings) for t in trajectories],
        "error": [t.error for t in trajectories],
    }
    schema = pa.schema([
        ("traj_id", pa.string()), ("sample_id", pa.string()), ("group_index", pa.int32()),
        ("rollout_step", pa.int64()), ("end_reason", pa.string()), ("prompt_length", pa.int32()),
        ("token_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float64())), ("initial_high", pa.list_(pa.int32())),
        ("initial_low", pa.list_(pa.int32())), ("sample", pa.string()), ("frames", pa.string()),
        ("turns", pa.string()), ("timings", pa.string()), ("error", pa.string()),
    ])
    return pa.table(rows, schema=schema)


def from_arrow(table) -> list[Trajectory]:
    out = []
    for row in table.to_pylist():
        turns = []
        for d in json.loads(row["turns"]):
            rec = _turn_record_from_dict(d.pop("record"))
            turns.append(TurnTrace(**d, record=rec))
        out.append(Trajectory(
            traj_id=row["traj_id"],
            sample=Sample.from_dict(json.loads(row["sample"])),
            group_index=row["group_index"],
            token_ids=list(row["token_ids"]),
            loss_mask=list(row["loss_mask"]),
            logprobs=[float(x) for x in row["logprobs"]],
            frames=[FrameRef(**f) for f in json.loads(row["frames"])],
            turns=turns,
            initial_high=list(row["initial_high"]),
            initial_low=list(row["initial_low"]),
            end_reason=row["end_reason"],
            prompt_length=row["prompt_length"],
            rollout_step=row["rollout_step"],
            timings=json.loads(row["timings"]),
            error=row.get("error") or "",
        ))
    return out


def write_parquet(trajectories: list[Trajectory], path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(to_arrow(trajectories), path)


def read_parquet(path) -> list[Trajectory]:
    import pyarrow.parquet as pq

    return from_arrow(pq.read_table(path))
