"""The reward terms of METHOD.md section 3 as small pure functions, and their weighted sum.

Every term takes the same `RewardInputs` (parsed turns, presence, per-turn IoUs) and the
`RewardConfig`, and returns a float. The four switches of RewardConfig select between the intended
behaviour (defaults) and the released code's behaviour (`reference_behaviour: true`):

- dense_branches: the linear top branch of "keyframe vs video" and "progressive" (the released code
  computed it and then overwrote it, so only the step branches acted);
- inclusive_interval: [s, e] includes e, as everywhere else in the protocol (released: e
  exclusive, so s == e was an empty, failing interval and the end was clamped to T, not T-1);
- empty_keyframe_iou_one: a keyframe where prediction and truth are both empty has IoU 1
  (released: 0);
- require_final_answer: the format term also needs the last turn to be an <answer> (released:
  any well-formed select/answer sequence passed).

Edge cases decided here: a target absent from the whole video makes every interval correct
(p = 1, as the released code did); a turn's grammar is judged by the environment's parser (an
Action means it parsed, a ParseError that it did not); with no sampled frames the mask term is -1
(as released); an episode without turns takes each term's failure value (format -1, step 0,
interval -0.5, keyframe -1, mask -1, the two multi-turn terms 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from configs.schema import REWARD_TERMS, RewardConfig
from env.types import Action, TurnRecord

INTERVAL_PASS_SCALE = 0.5
INTERVAL_FAIL = -0.5
INTERVAL_MIN_PRESENCE = 0.5


@dataclass(frozen=True)
class RewardInputs:
    turns: Sequence[TurnRecord]
    num_frames: int
    presence: Sequence[bool]  # target visible per frame (Sample.presence)
    iou_vid: Sequence[Sequence[float]]  # per turn: J on each sampled frame (both empty = 1)
    iou_kf: Sequence[float]  # per turn: J on the turn's keyframe (both empty = 1)
    kf_both_empty: Sequence[bool]  # per turn: prediction and truth both empty on the keyframe

    def __post_init__(self):
        n = len(self.turns)
        if not (len(self.iou_vid) == len(self.iou_kf) == len(self.kf_both_empty) == n):
            raise ValueError(f"per-turn inputs disagree: {n} turns, {len(self.iou_vid)} IoU_vid, "
                             f"{len(self.iou_kf)} IoU_kf, {len(self.kf_both_empty)} empty flags")
        if len(self.presence) != self.num_frames:
            raise ValueError(f"presence has {len(self.presence)} entries for {self.num_frames} frames")


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(int(v), hi))


def last_action(inp: RewardInputs) -> Action | None:
    """The last turn's parsed action, or None if it did not parse (or there are no turns)."""
    if not inp.turns:
        return None
    last = inp.turns[-1]
    return last.action if last.error is None else None


def effective_kf_ious(inp: RewardInputs, cfg: RewardConfig) -> list[float]:
    """Keyframe IoUs as the reward sees them: both-empty counts 1, or 0 in reference mode."""
    if cfg.empty_keyframe_iou_one:
        return [float(v) for v in inp.iou_kf]
    return [0.0 if empty else float(v) for v, empty in zip(inp.iou_kf, inp.kf_both_empty)]


# ----------------------------------------------------------------------------------- terms
def format_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """+1 if every turn follows the grammar (and, by default, the last one answers), else -1."""
    if not inp.turns:
        return -1.0
    if any(t.action is None or t.error is not None for t in inp.turns):
        return -1.0
    if cfg.require_final_answer and inp.turns[-1].action.kind != "answer":
        return -1.0
    return 1.0


def step_format_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """0.25 per "step 1/2/3"/"action" marker in each turn's thinking block, averaged over turns."""
    if not inp.turns:
        return 0.0
    per_turn = []
    for t in inp.turns:
        source = t.action if t.action is not None else t.error
        markers = source.step_markers if source is not None else (False,) * 4
        per_turn.append(0.25 * sum(bool(m) for m in markers))
    return sum(per_turn) / len(per_turn)


def interval_frames(action: Action, num_frames: int, inclusive: bool) -> range:
    """Frames of the last turn's [s, e]; empty when the interval is degenerate."""
    if inclusive:
        s, e = _clamp(action.start, 0, num_frames - 1), _clamp(action.end, 0, num_frames - 1)
        return range(s, e + 1) if e >= s else range(0)
    s, e = _clamp(action.start, 0, num_frames), _clamp(action.end, 0, num_frames)
    return range(s, e) if e > s else range(0)


def interval_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """p = share of [s, e] where the target is present; 0.5 * p if p >= 0.5, else -0.5."""
    action = last_action(inp)
    if action is None:
        return INTERVAL_FAIL
    frames = interval_frames(action, inp.num_frames, cfg.inclusive_interval)
    if len(frames) == 0:
        return INTERVAL_FAIL
    if not any(inp.presence):
        p = 1.0  # nothing to find anywhere: no interval is wrong
    else:
        p = sum(1 for f in frames if inp.presence[f]) / len(frames)
    return INTERVAL_FAIL if p < INTERVAL_MIN_PRESENCE else INTERVAL_PASS_SCALE * p


def keyframe_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """+1 if the target is visible on the last turn's (clamped) keyframe k, else -1."""
    action = last_action(inp)
    if action is None or inp.num_frames < 1:
        return -1.0
    k = _clamp(action.keyframe, 0, inp.num_frames - 1)
    return 1.0 if inp.presence[k] else -1.0


def mask_score(iou: float) -> float:
    if iou <= 0.2:
        return -1.0
    if iou <= 0.4:
        return 0.0
    return min(3.0 * (iou - 0.4), 1.5)


def mask_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """Last turn, per sampled frame: -1 / 0 / min(3 (IoU - 0.4), 1.5), averaged."""
    if not inp.turns or not inp.iou_vid[-1]:
        return -1.0  # nothing was judged: as the released code, the worst score
    scores = [mask_score(v) for v in inp.iou_vid[-1]]
    return sum(scores) / len(scores)


def keyframe_vs_video_score(d: float, dense: bool) -> float:
    if dense and d > 0.2:
        return min(5.0 * (d - 0.1), 2.0)
    if d > 0.1:
        return 0.5
    if d > -0.05:
        return 0.0
    return -1.0


def keyframe_vs_video_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """With >= 2 turns: d = IoU_kf[last] - mean IoU_vid[last], scored by keyframe_vs_video_score."""
    if len(inp.turns) < 2:
        return 0.0
    vid = list(inp.iou_vid[-1])
    mean_vid = sum(vid) / len(vid) if vid else 0.0
    d = effective_kf_ious(inp, cfg)[-1] - mean_vid
    return keyframe_vs_video_score(d, cfg.dense_branches)


def progressive_score(d: float, dense: bool) -> float:
    if dense and d > 0.1:
        return min(10.0 * (d - 0.05), 2.0)
    if d > 0.05:
        return 0.5
    if d > -0.05:
        return 0.0
    return -1.0


def progressive_term(inp: RewardInputs, cfg: RewardConfig) -> float:
    """With >= 2 turns: d = IoU_kf[last] - best earlier IoU_kf, scored by progressive_score."""
    if len(inp.turns) < 2:
        return 0.0
    kf = effective_kf_ious(inp, cfg)
    return progressive_score(kf[-1] - max(kf[:-1]), cfg.dense_branches)


RewardTerm = Callable[[RewardInputs, RewardConfig], float]

REWARD_REGISTRY: dict[str, RewardTerm] = {
    "format": format_term,
    "step_format": step_format_term,
    "interval": interval_term,
    "keyframe": keyframe_term,
    "mask": mask_term,
    "keyframe_vs_video": keyframe_vs_video_term,
    "progressive": progressive_term,
}
if tuple(REWARD_REGISTRY) != tuple(REWARD_TERMS):
    raise RuntimeError(f"reward registry {list(REWARD_REGISTRY)} disagrees with REWARD_TERMS {REWARD_TERMS}")


def compute_rewards(inp: RewardInputs, cfg: RewardConfig) -> tuple[dict[str, float], float]:
    """(unweighted terms, weighted total)."""
    terms = {name: float(fn(inp, cfg)) for name, fn in REWARD_REGISTRY.items()}
    total = sum(cfg.weights.get(name, 0.0) * value for name, value in terms.items())
    return terms, float(total)
