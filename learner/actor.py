"""Learner ranks as Ray actors (one DeepSpeed rank each) and the group that drives them.

Construction is two-phase: actors start light, rank 0 reports an address and a free port, then
all ranks build the model and join the process group together (DeepSpeed needs every rank inside
`initialize` at once).
"""

from __future__ import annotations

import logging
import os
import socket

from configs.schema import Config

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerWorker:
    def __init__(self, cfg: dict, policy_dir: str, rank: int, world_size: int, env_handles: list):
        logging.basicConfig(level=logging.INFO)
        self.cfg = Config.model_validate(cfg)
        self.policy_dir = policy_dir
        self.rank, self.world_size = rank, world_size
        self.env_handles = env_handles
        self.core = None

    def pid(self) -> int:
        return os.getpid()

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, master_addr: str, master_port: int) -> dict:
        import ray

        from learner.core import LearnerCore, distributed_env

        distributed_env(self.rank, self.world_size, master_addr, master_port)
        env = self.env_handles[self.rank % len(self.env_handles)]

        def frames(refs):
            return ray.get(env.frames_for.remote(list(refs)))

        def gt(sample, indices):
            return ray.get(env.gt_masks.remote(sample, list(indices)))

        def features(value):
            return ray.get(value) if isinstance(value, ray.ObjectRef) else value

        self.core = LearnerCore(self.cfg, self.policy_dir, self.rank, self.world_size,
                                frame_fetcher=frames, feature_fetcher=features, gt_fetcher=gt)
        info = {"rank": self.rank, "pid": os.getpid(), "device": self.core.device}
        if self.cfg.learner.prompt_align_weight > 0:
            names = [d.name for d in self.cfg.data.train]
            expressions = [e for name in names for e in ray.get(env.expressions.remote(name))]
            info["prompt_spread"] = self.core.set_prompt_pool(expressions)
        return info

    def score(self, trajs: list):
        return self.core.score(trajs)

    def train(self, items: list, totals) -> dict:
        return self.core.train(items, totals)

    def export_lm_weights(self, shm_root: str, version: int):
        """Write the engine weights into this node's shared memory; returns the `WeightUpdate`."""
        import ray

        from rollout.weight_transport import prune_versions, publish, write_buckets

        manifest = write_buckets(self.core.lm_weights().items(), shm_root, version)
        prune_versions(shm_root, keep=2)
        return publish(shm_root, manifest, ray.get_runtime_context().get_node_id())

    def share_lm_weights(self, update, fetch_everywhere: bool = False):
        """`update` with its files' bytes also in Ray's object store (owned by this actor), for
        engines on other nodes."""
        import ray

        return update.shared(ray.put, fetch_everywhere)

    def head_weights(self) -> dict:
        return self.core.head_weights()

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self.core.save_checkpoint(ckpt_dir, tag, client_state)

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> dict:
        return self.core.load_checkpoint(ckpt_dir, tag)

    def export_policy(self, out_dir: str) -> str:
        return str(self.core.export_policy(out_dir))


class LearnerGroup:
    """N learner ranks. Shards batches by token count, gathers results in the caller's order."""

    def __init__(self, workers: list):
        self.workers = workers

    @classmethod
    def start(cls, cfg: Config, policy_dir: str, env_handles: list, options: dict | None = None,
              placement_group=None) -> "LearnerGroup":
        import ray

        n = cfg.learner.num_ranks
        opts = dict(options or {"num_cpus": cfg.cluster.learner.num_cpus, "num_gpus": cfg.cluster.learner.num_gpus})
        # A learner rank is not restarted by Ray: a lost rank breaks the process group, so the step
        # fails and the run resumes from its last checkpoint.
        opts["max_restarts"] = 0
        remote_cls = ray.remote(**opts)(LearnerWorker)
        workers = []
        for rank in range(n):
            o = {}
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                o["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=rank)
            workers.append(remote_cls.options(**o).remote(cfg.model_dump(mode="json"), str(policy_dir), rank, n,
                                                           env_handles))
        addr, port = ray.get(workers[0].address.remote())
        ray.get([w.setup.remote(addr, port) for w in workers])
        return cls(workers)

    def shard(self, lengths: list[int]) -> list[list[int]]:
        """Greedy balance of sequence lengths over ranks (longest first)."""
        shards: list[list[int]] = [[] for _ in self.workers]
        load = [0] * len(self.workers)
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            r = load.index(min(load))
            shards[r].append(i)
            load[r] += lengths[i]
        return shards

    def _scatter(self, method: str, items: list, lengths: list[int], *args, timeout: float | None = None):
        import ray

        shards = self.shard(lengths)
        refs = [getattr(w, method).remote([items[i] for i in s], *args) for w, s in zip(self.workers, shards)]
        parts = ray.get(refs, timeout=timeout)
        return shards, parts

    def score(self, trajs: list, timeout: float | None = None) -> list:
        shards, parts = self._scatter("score", trajs, [len(t.token_ids) for t in trajs], timeout=timeout)
        out = [None] * len(trajs)
        for shard, part in zip(shards, parts):
            for i, r in zip(shard, part):
                out[i] = r
        return out

    def train(self, items: list, totals, timeout: float | None = None) -> dict:
        _, parts = self._scatter("train", items, [len(it.traj.token_ids) for it in items], totals, timeout=timeout)
        merged: dict[str, float] = {}
        for p in parts:
            for k, v in p.items():
                if k in ("grad_norm", "lr"):
                    merged[k] = v  # identical on every rank after the reduction
                elif k == "train_seconds":
                    merged[k] = max(merged.get(k, 0.0), v)
                else:
                    merged[k] = merged.get(k, 0.0) + v
        return merged

    def _all(self, method: str, *args, timeout: float | None = None) -> list:
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in self.workers], timeout=timeout)

    def _first(self, method: str, *args, timeout: float | None = None):
        import ray

        return ray.get(getattr(self.workers[0], method).remote(*args), timeout=timeout)

    def export_lm_weights(self, shm_root: str, version: int, timeout: float | None = None):
        return self._first("export_lm_weights", shm_root, version, timeout=timeout)

    def share_lm_weights(self, update, fetch_everywhere: bool = False, timeout: float | None = None):
        return self._first("share_lm_weights", update, fetch_everywhere, timeout=timeout)

    def head_weights(self, timeout: float | None = None) -> dict:
        return self._first("head_weights", timeout=timeout)

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict, timeout: float | None = None) -> None:
        self._all("save_checkpoint", ckpt_dir, tag, client_state, timeout=timeout)

    def load_checkpoint(self, ckpt_dir: str, tag: str, timeout: float | None = None) -> dict:
        return self._all("load_checkpoint", ckpt_dir, tag, timeout=timeout)[0]

    def export_policy(self, out_dir: str, timeout: float | None = None) -> str:
        return self._first("export_policy", out_dir, timeout=timeout)
