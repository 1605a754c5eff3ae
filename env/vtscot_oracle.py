"""Oracle VTS-CoT trajectories: cold-start data written by a player that knows the ground truth.

For each sample the oracle looks at the target's presence and masks, then plays a real episode
(env.episode.EpisodeLogic, the same observations the policy will see) with 1 to 3 turns:

    1 turn    answer  (a, b, k)
    2 turns   select  (wide window around [a, b], k)    -> answer (a, b, k)
    3 turns   select  (wide window, another visible k1)  -> select (a, b, k) -> answer (a, b, k)

[a, b] is the longest run of frames where the target is visible, k the frame of that run where the
target covers the most pixels (a clear view: the final [SEG] is placed and propagated from the last
selected keyframe, so that one must be good). Each turn thinks in the three steps of the protocol:
temporal (which frames), spatial (where on the keyframe, from the mask's centre), expression, then
the action. Samples whose target is never visible are left out.

Usage:
    python -m env.vtscot_oracle --out FILE [--preset debug_cpu] [--config F] [--seed S]
        [--max-samples N] [--data DIR --format revos --name NAME] [overrides ...]
Without --data the datasets are the config's data.train; the env settings (frames, budgets,
turns) always come from the config, so SFT on the file must use the same env section.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from env.errors import DataError
from env.protocol import format_turn
from env.types import Sample
from env.vtscot import VTSCoTRecord, record_from_episode, write_vtscot

log = logging.getLogger(__name__)

GENERATOR = "env.vtscot_oracle/1"
# How many assistant turns an oracle episode uses (capped by env.max_turns).
TURN_WEIGHTS = {1: 0.25, 2: 0.45, 3: 0.30}


@dataclass(frozen=True)
class OracleTurn:
    kind: str  # "select" | "answer"
    start: int
    end: int
    keyframe: int
    think: str

    def text(self) -> str:
        return format_turn(self.think, self.kind, self.start, self.end, self.keyframe)


def visible_runs(presence: Iterable[bool]) -> list[tuple[int, int]]:
    """Maximal runs [first, last] (inclusive) of frames where the target is visible."""
    runs, start = [], None
    flags = list(presence)
    for i, p in enumerate(flags):
        if p and start is None:
            start = i
        elif not p and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def longest_run(presence: Iterable[bool]) -> tuple[int, int] | None:
    runs = visible_runs(presence)
    if not runs:
        return None
    return max(runs, key=lambda r: (r[1] - r[0], -r[0]))  # longest; the earliest among equals


def best_keyframe(areas: dict[int, int], run: tuple[int, int]) -> int:
    """The frame of `run` where the target is largest; among equals the one nearest the run's middle."""
    mid = (run[0] + run[1]) / 2
    return max(range(run[0], run[1] + 1), key=lambda f: (areas.get(f, 0), -abs(f - mid), -f))


def position_phrase(mask: np.ndarray) -> str:
    """Where the mask's centre lies, in words ("top left", "centre", "bottom"...)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return "nowhere"
    h, w = mask.shape
    cy, cx = ys.mean() / max(h, 1), xs.mean() / max(w, 1)
    vertical = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return " ".join(p for p in (vertical, horizontal) if p) or "centre"


def wide_window(run: tuple[int, int], num_frames: int) -> tuple[int, int]:
    """A coarser interval around the run, as a first look would ask for."""
    margin = max(1, num_frames // 8)
    return max(0, run[0] - margin), min(num_frames - 1, run[1] + margin)


def _think(temporal: str, where: str, keyframe: int, expression: str, action: str) -> str:
    return (f"Step 1: temporal - {temporal}. Step 2: spatial - on frame {keyframe} it is at the {where}. "
            f"Step 3: expression - {expression}. Action: {action}.")


def plan_turns(num_frames: int, run: tuple[int, int], keyframe: int, where: dict[int, str],
               n_turns: int, presence: tuple[bool, ...]) -> list[OracleTurn]:
    """The oracle's turns for one sample (see the module docstring). `where[f]` describes the
    target's position on frame f; it must cover `keyframe` and the first look's keyframe."""
    a, b = run
    answer = OracleTurn("answer", a, b, keyframe,
                        _think(f"it is visible from frame {a} to {b}", where[keyframe], keyframe,
                               "it is the one the query means", "answer"))
    if n_turns <= 1:
        return [answer]
    s, e = wide_window(run, num_frames)
    if n_turns == 2:
        look = OracleTurn("select", s, e, keyframe,
                          _think(f"it seems to be in frames {s} to {e}", where[keyframe], keyframe,
                                 "it fits the query", "select to look closer"))
        return [look, answer]
    k1 = first_look_keyframe(run, keyframe, presence)
    first = OracleTurn("select", s, e, k1,
                       _think(f"it seems to be in frames {s} to {e}", where[k1], k1,
                              "it may fit the query", "select to look closer"))
    refine = OracleTurn("select", a, b, keyframe,
                        _think(f"it is visible from frame {a} to {b}", where[keyframe], keyframe,
                               "it fits the query", "select to check the best view"))
    return [first, refine, answer]


def first_look_keyframe(run: tuple[int, int], keyframe: int, presence: tuple[bool, ...]) -> int:
    """A visible frame of the run other than the best one (the run's middle when possible)."""
    candidates = [f for f in range(run[0], run[1] + 1) if presence[f] and f != keyframe]
    if not candidates:
        return keyframe
    mid = (run[0] + run[1]) // 2
    return min(candidates, key=lambda f: (abs(f - mid), f))


def pick_turns(rng: np.random.Generator, max_turns: int) -> int:
    options = [n for n in TURN_WEIGHTS if n <= max_turns]
    weights = np.array([TURN_WEIGHTS[n] for n in options])
    return int(rng.choice(options, p=weights / weights.sum()))


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """Per-sample randomness that does not depend on which other samples are generated."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(sample_id.encode())])


def oracle_record(env, sample: Sample, seed: int = 0, n_turns: int | None = None) -> VTSCoTRecord | None:
    """Play the oracle's episode for `sample` on `env` (an EnvService); None if the target never shows.

    `n_turns` fixes the number of turns (else drawn per sample from TURN_WEIGHTS)."""
    presence = tuple(env.presence(sample))
    run = longest_run(presence)
    if run is None:
        return None
    max_turns = env.cfg.max_turns
    n = min(n_turns, max_turns) if n_turns else pick_turns(sample_rng(seed, sample.sample_id), max_turns)
    frames = list(range(run[0], run[1] + 1))
    gt = env.gt_masks(sample, frames)
    areas = {f: int(m.sum()) for f, m in zip(frames, gt)}
    keyframe = best_keyframe(areas, run)
    where = {f: position_phrase(m) for f, m in zip(frames, gt)}
    turns = plan_turns(sample.num_frames, run, keyframe, where, n, presence)
    res = env.reset(sample, f"oracle:{sample.sample_id}")
    observations = [res.observation]
    for turn in turns:
        res = env.step(res.state, turn.text())
        if res.observation is not None:
            observations.append(res.observation)
    if res.state.end_reason != "answer":  # cannot happen for a well-formed plan; keep the file clean
        raise RuntimeError(f"oracle episode of {sample.sample_id} ended with {res.state.end_reason}")
    dataset = env.dataset(sample.dataset)
    return record_from_episode(res.state, observations, dataset.frame_names(sample.video_id),
                               {"generator": GENERATOR, "seed": seed, "turns": len(turns)})


def generate_records(env, seed: int = 0, max_samples: int | None = None,
                     datasets: list[str] | None = None) -> Iterator[VTSCoTRecord]:
    """Oracle records for the samples of `env` (all datasets, or those named), in sample-id order."""
    ids = sorted(sid for name in (datasets or list(env.datasets)) for sid in env.sample_ids(name))
    made = 0
    for sid in ids:
        if max_samples is not None and made >= max_samples:
            return
        try:
            record = oracle_record(env, env.sample(sid), seed)
        except DataError as exc:
            log.warning("oracle: %s left out: %s", sid, exc)
            continue
        if record is None:
            log.info("oracle: %s left out: the target is never visible", sid)
            continue
        made += 1
        yield record


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError, load_config
    from configs.schema import DatasetSpec
    from env.service import EnvService

    ap = argparse.ArgumentParser(prog="python -m env.vtscot_oracle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="VTS-CoT JSONL file to write")
    ap.add_argument("--preset", default="debug_cpu")
    ap.add_argument("--config", default=None)
    ap.add_argument("--seed", type=int, default=0, help="draws the number of turns per sample")
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--data", default=None, help="a dataset root instead of the config's data.train")
    ap.add_argument("--format", default="revos", help="format of --data (revos, mevis, refsav, davis, ...)")
    ap.add_argument("--name", default=None, help="dataset name of --data (prefix of the sample ids)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
        specs = list(cfg.data.train)
        if args.data:
            specs = [DatasetSpec(name=args.name or Path(args.data).resolve().name, format=args.format,
                                 root=Path(args.data))]
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    specs = [s for s in specs if s.root is None or Path(s.root).exists() or not s.optional]
    env = EnvService(cfg.env, specs, cache_dir=str(cfg.model.cache_dir))
    count = write_vtscot(generate_records(env, args.seed, args.max_samples), args.out)
    print(f"wrote {count} oracle trajectories to {args.out}")
    return 0 if count else 1


if __name__ == "__main__":
    raise SystemExit(main())
