"""The Ray side of evaluation: actors built with the evaluation env config, one policy at a time.

    env actors       VideoEnvActor x env.num_actors        eval frame counts and keyframe budget
    reward pool      SegRewardPoolActor x reward.num_actors  predict(): bidirectional propagation
    rollout          RolloutWorker x rollout.num_workers     greedy (rollout.eval_sampling)
    scorers          SegScorerActor x learner.num_ranks      [SEG] hidden states, no optimizer

Several policies are evaluated in one session: the next policy's language-model weights go into
the running engines through the same in-place reload the trainer uses (no engine restart), the
scorers reload the directory, and the pool gets the new heads. A policy of another architecture or
tokenizer restarts the rollout workers instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from configs import Config
from rollout.shm_segments import reap_stale_weight_dirs
from rollout.weight_transport import default_shm_root
from learner import eval_report as er

log = logging.getLogger(__name__)

# config.json keys that differ between saves of the same architecture.
_VOLATILE_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures"}


def policy_signature(policy_dir: str | Path) -> str:
    """What must match for a weight swap: the architecture config and the tokenizer."""
    policy_dir = Path(policy_dir)

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in sorted(d.items()) if k not in _VOLATILE_KEYS}
        return d

    conf = strip(json.loads((policy_dir / "config.json").read_text()))
    h = hashlib.sha256(json.dumps(conf, sort_keys=True).encode())
    tok = policy_dir / "tokenizer.json"
    h.update(tok.read_bytes() if tok.is_file() else b"")
    return h.hexdigest()[:16]


def policy_lm_tensors(policy_dir: str | Path):
    """(name, tensor) of the HF weights in a policy directory, checkpoint names as saved."""
    from safetensors import safe_open

    files = sorted(Path(policy_dir).glob("*.safetensors"))  # the heads live in a subdirectory
    if not files:
        raise FileNotFoundError(f"{policy_dir} holds no safetensors weights")
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class EvalSession:
    def __init__(self, cfg: Config, policy_dir: str | Path, placements: dict | None = None):
        """`cfg` is the evaluation config: env = the eval env config, data.eval = what to score."""
        import ray

        from cluster.ray_setup import actor_options
        from env.actor import VideoEnvActor
        from learner.seg_scorer import SegScorerActor
        from learner.system import policy_hidden_size
        from segmentation.reward_pool import RewardPool, SegRewardPoolActor

        self.cfg = cfg
        self.placements = placements or {}
        cache_dir = str(Path(cfg.model.cache_dir).resolve())
        specs = [d.model_dump(mode="json") for d in cfg.data.eval]
        env_cls = ray.remote(VideoEnvActor)
        self.envs = [env_cls.options(**actor_options(cfg, "env", self.placements, i)).remote(
            cfg.env.model_dump(mode="json"), specs, cache_dir) for i in range(cfg.env.num_actors)]
        ray.get([e.ready.remote() for e in self.envs])
        self.formats = {d.name: d.format for d in cfg.data.eval}
        hidden = policy_hidden_size(Path(policy_dir))
        reward_cls = ray.remote(SegRewardPoolActor)
        actors = []
        for i in range(cfg.reward.num_actors):
            opts = actor_options(cfg, "reward", self.placements, i)
            device = "cuda" if opts.get("num_gpus", 0) > 0 else "cpu"
            threads = max(1, int(opts.get("num_cpus") or 1)) if device == "cpu" else None
            actors.append(reward_cls.options(**opts).remote(cfg.model, cfg.reward, hidden, list(cfg.data.eval),
                                                            None, None, None, device, threads, cache_dir))
        self.pool = RewardPool(actors)
        scorer_cls = ray.remote(SegScorerActor)
        self.scorers = []
        for i in range(cfg.learner.num_ranks):
            opts = actor_options(cfg, "learner", self.placements, i)
            threads = max(1, int(opts.get("num_cpus") or 1)) if not opts.get("num_gpus") else None
            self.scorers.append(scorer_cls.options(**opts).remote(
                cfg.model_dump(mode="json"), str(policy_dir), self.envs[i % len(self.envs)], threads))
        self.workers, self.router = [], None
        self._start_rollout(policy_dir)
        shm = default_shm_root(cfg.eval.output_dir)
        reap_stale_weight_dirs()  # left by drivers that were killed on this host
        self.shm_root = shm / f"videoseg_eval_{os.getpid()}_{int(time.time())}"
        self.version = 0
        self._push_heads()

    # ---------------------------------------------------------------------------- policies
    def _start_rollout(self, policy_dir) -> None:
        import ray

        from cluster.ray_setup import actor_options
        from rollout.actor import RolloutRouter, RolloutWorker

        roll_cls = ray.remote(RolloutWorker)
        self.workers = [roll_cls.options(max_concurrency=1000, **actor_options(self.cfg, "rollout", self.placements, i))
                        .remote(self.cfg.model_dump(mode="json"), str(policy_dir), self.envs, i)
                        for i in range(self.cfg.rollout.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])
        self.router = RolloutRouter(self.workers)
        self.engine_signature = policy_signature(policy_dir)
        self.policy_dir = str(policy_dir)

    def _stop_rollout(self) -> None:
        import ray

        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=60)
        except Exception as exc:  # engines already gone
            log.warning("rollout shutdown: %s", exc)
        for w in self.workers:
            ray.kill(w)
        self.workers = []

    def _push_heads(self) -> None:
        import ray

        heads = ray.get(self.scorers[0].head_weights.remote())
        self.pool.update_weights(self.version, heads)

    def use_policy(self, policy_dir: str | Path) -> str:
        """Make every actor hold `policy_dir`; returns how ("current", "swapped" or "restarted")."""
        import ray

        from rollout.weight_transport import prune_versions, publish, share_if_needed, write_buckets

        if str(policy_dir) == self.policy_dir:
            return "current"
        self.version += 1
        ray.get([s.load.remote(str(policy_dir)) for s in self.scorers])
        self._push_heads()
        if policy_signature(policy_dir) == self.engine_signature:
            manifest = write_buckets(policy_lm_tensors(policy_dir), self.shm_root, self.version)
            update = share_if_needed(publish(self.shm_root, manifest, ray.get_runtime_context().get_node_id()),
                                     self.cfg.rollout.weight_transport,
                                     lambda u, everywhere: u.shared(ray.put, everywhere))
            self.router.update_weights(update, self.version)
            del update  # frees the object-store copies
            prune_versions(self.shm_root, keep=1)
            self.policy_dir = str(policy_dir)
            return "swapped"
        log.info("%s differs in architecture or tokenizer from the engines' policy; restarting them", policy_dir)
        self._stop_rollout()
        self._start_rollout(policy_dir)
        return "restarted"

    # ------------------------------------------------------------------------------ a run
    def sample_ids(self) -> dict[str, list[str]]:
        import ray

        out = {}
        for spec in self.cfg.data.eval:
            ids = ray.get(self.envs[0].sample_ids.remote(spec.name))
            out[spec.name] = er.spread_subset(ids, self.cfg.eval.max_samples)
        return out

    def _seg_hidden(self, trajs: list, timeout: float) -> list:
        import ray

        shards = [list(range(i, len(trajs), len(self.scorers))) for i in range(len(self.scorers))]
        parts = ray.get([s.seg_hidden.remote([trajs[i] for i in idx]) for s, idx in zip(self.scorers, shards) if idx],
                        timeout=timeout)
        out = [None] * len(trajs)
        for idx, part in zip([s for s in shards if s], parts):
            for i, h in zip(idx, part):
                out[i] = h
        return out

    def run(self, out_dir: str | Path, sample_ids: dict[str, list[str]] | None = None) -> dict:
        """Greedy episodes on every evaluation sample, masks, results.json per dataset, the report."""
        import ray

        from segmentation.reward_pool import final_keyframe
        from segmentation.types import ScoreRequest

        out_dir = Path(out_dir)
        timeout = self.cfg.run.step_timeout_s
        sample_ids = sample_ids or self.sample_ids()
        flat = [sid for ids in sample_ids.values() for sid in ids]
        t0 = time.time()
        samples = ray.get([self.envs[0].sample.remote(sid) for sid in flat])
        trajs = self.router.collect(self.router.launch(samples, 1, 0, greedy=True), timeout)
        t1 = time.time()
        states = self._seg_hidden(trajs, timeout)
        requests = [ScoreRequest(t.traj_id, t.episode_state(), h, policy_version=self.version)
                    for t, h in zip(trajs, states)]
        masks = self.pool.predict(requests, timeout_s=timeout)
        t2 = time.time()
        rewards = (self.pool.score(requests, return_features=False, timeout_s=timeout)
                   if self.cfg.eval.compute_rewards else [None] * len(trajs))
        t3 = time.time()
        per_dataset: dict[str, dict] = {}
        all_outcomes = []
        for name in sample_ids:
            results, scores, outcomes, by_video, foreground = {}, [], [], {}, {}
            for t, h, m, r in zip(trajs, states, masks, rewards):
                if t.sample.dataset != name:
                    continue
                s = t.sample
                kf = final_keyframe(t.episode_state())
                outcome = er.episode_outcome(t, kf, any(x is not None for x in h), r)
                entry = er.results_entry(m, exp=s.expression, turns=t.num_turns, keyframe=kf,
                                         end_reason=str(t.end_reason))
                er.add_result(results, s.video_id, s.exp_id, entry)
                gt = ray.get(self.envs[0].gt_masks.remote(s, list(range(s.num_frames))))
                # Score what was written: the masks decoded back from the RLE of results.json.
                pred = er.entry_masks(entry)
                if s.video_id not in foreground:
                    foreground[s.video_id] = ray.get(self.envs[0].foreground_pixels.remote(s))
                fg = foreground[s.video_id]
                score = er.expression_score(s.video_id, s.exp_id, gt, pred, s.type_id, fg)
                by_video.setdefault(s.video_id, []).append((er.coarse_masks(gt), er.coarse_masks(pred)))
                outcome.J, outcome.F = score.j, score.f
                scores.append(score)
                outcomes.append(outcome)
            path = er.write_results(out_dir / name / "results.json", results)
            per_dataset[name] = {
                "format": self.formats[name], "results": str(path),
                "scores": er.dataset_summary(self.formats[name], scores),
                "episodes": er.episode_summary(outcomes),
                "cross_target": er.cross_target_agreement(by_video),
                "per_expression": {sc.key: sc.as_dict() for sc in scores},
            }
            all_outcomes += outcomes
        report = {
            "policy": self.policy_dir,
            "overall": er.overall_summary(per_dataset, all_outcomes),
            "datasets": per_dataset,
            "settings": self.settings(),
            "seconds": {"rollout": t1 - t0, "seg_and_propagation": t2 - t1, "rewards": t3 - t2,
                        "total": time.time() - t0},
            "samples": [o.as_dict() for o in all_outcomes],
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))
        return report

    def settings(self) -> dict:
        c = self.cfg
        return {"env": c.env.model_dump(mode="json"), "sampling": c.rollout.eval_sampling.model_dump(mode="json"),
                "max_samples_per_dataset": c.eval.max_samples, "sam2_config": c.model.sam2_config,
                "sam2_image_size": c.model.sam2_image_size,
                "datasets": [d.model_dump(mode="json") for d in c.data.eval]}

    def shutdown(self) -> None:
        import shutil

        self._stop_rollout()
        shutil.rmtree(self.shm_root, ignore_errors=True)
