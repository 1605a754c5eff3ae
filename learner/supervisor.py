"""Fault handling around the actor calls of a step.

Each role fails differently, and each is recovered where it fails:
  rollout  the worker restarts (Ray max_restarts); the driver waits for it, pushes the current
           weights into the new engine, then re-issues that worker's share of the batch. Episodes
           are seeded per (sample, rollout, step, turn), so the re-issued share is the same work.
  env      Ray restarts the actor and retries its calls; the env keeps no episode state.
  reward   the actor restarts and its calls are retried; scoring is a pure function of the inputs
           and the weights, and a restarted actor refuses to score until the learner's current
           weights are pushed again (the driver does that, then repeats the call).
  learner  a lost DeepSpeed rank cannot rejoin its process group: the group is rebuilt and the run
           continues from its last complete checkpoint (ledger and data cursor rolled back with it).
Every fault and recovery is recorded as a ledger event. Calls wait with timeouts, never forever.
"""

from __future__ import annotations

import logging
import time

from learner.system import System

log = logging.getLogger(__name__)


class LearnerLost(RuntimeError):
    """A learner rank died or hung; the run must continue from its last checkpoint."""


def _faults():
    from ray import exceptions as rex

    return (rex.RayActorError, rex.ActorUnavailableError, rex.GetTimeoutError, rex.ObjectLostError,
            rex.OwnerDiedError, rex.WorkerCrashedError)


class Supervisor:
    def __init__(self, system: System, ledger, timeout_s: float, retries: int = 3):
        self.system = system
        self.ledger = ledger
        self.timeout = timeout_s
        self.retries = retries
        self.version = 0
        self.update = None  # the current WeightUpdate; None before the first sync
        self.transports: set[str] = set()  # how the last sync reached the engines (logged on change)
        self.heads: dict | None = None
        self.step = 0

    def fault(self, role: str, exc: BaseException, **detail) -> None:
        log.warning("fault in %s at step %d: %s", role, self.step, str(exc).splitlines()[0][:300])
        self.ledger.record_event(self.step, "fault", {"role": role, "error": type(exc).__name__, **detail})

    # ------------------------------------------------------------------------------ weights
    def sync(self, version: int) -> dict:
        """Push the learner's weights everywhere. A dead engine or pool actor is revived first."""
        import ray

        t0 = time.time()
        try:
            self.update = self.system.learners.export_lm_weights(self.system.shm_root, version)
            self.heads = self.system.learners.head_weights()
            t1 = time.time()
            self._share_if_needed()
        except _faults() as exc:
            raise LearnerLost(str(exc)) from exc
        self.version = version
        t2 = time.time()
        transports = set()
        for i in range(len(self.system.rollout.workers)):
            info = self._call_rollout(i, lambda w: ray.get(w.update_weights.remote(self.update, version),
                                                            timeout=self.timeout))
            transports.add(info["transport"])
        if transports != self.transports:
            log.info("weights v%d reached the engines through: %s", version, ", ".join(sorted(transports)))
            self.transports = transports
        t3 = time.time()
        self._pool_call(lambda: self.system.pool.update_weights(version, self.heads, timeout_s=self.timeout))
        return {"export": t1 - t0, "share": t2 - t1, "engines": t3 - t2, "pool": time.time() - t3}

    def _share_if_needed(self) -> None:
        """Put the current weights into Ray's object store too when engines may be on other nodes
        (rollout.weight_transport); shared memory alone reaches only the learner's node. The learner
        does the putting: only its node can read the files."""
        from rollout.weight_transport import share_if_needed

        self.update = share_if_needed(
            self.update, self.system.cfg.rollout.weight_transport,
            lambda update, everywhere: self.system.learners.share_lm_weights(update, everywhere, timeout=self.timeout))

    # ----------------------------------------------------------------------------- rollout
    def _revive_rollout(self, i: int) -> None:
        """Wait until worker i answers again, then give its (possibly new) engine current weights."""
        import ray

        worker = self.system.rollout.workers[i]
        deadline = time.time() + self.timeout
        while True:
            try:
                health = ray.get(worker.health.remote(), timeout=min(60.0, self.timeout))
                break
            except _faults() as exc:
                if time.time() > deadline:
                    raise RuntimeError(f"rollout worker {i} did not come back within {self.timeout:.0f} s") from exc
                time.sleep(2.0)
        if self.update is not None and health["weight_version"] != self.version:
            self._share_if_needed()  # the cluster may have grown since the sync
            ray.get(worker.update_weights.remote(self.update, self.version), timeout=self.timeout)
        self.ledger.record_event(self.step, "recovered", {"role": "rollout", "worker": i, "pid": health["pid"]})

    def _call_rollout(self, i: int, fn):
        for attempt in range(self.retries + 1):
            try:
                return fn(self.system.rollout.workers[i])
            except _faults() as exc:
                if attempt == self.retries:
                    raise
                self.fault("rollout", exc, worker=i)
                self._revive_rollout(i)

    def launch(self, samples: list, group_size: int, step: int) -> dict:
        chunks = [(i, c) for i, c in enumerate(self.system.rollout.assign(samples)) if c]
        refs = {i: self.system.rollout.workers[i].generate.remote(c, group_size, step) for i, c in chunks}
        return {"chunks": chunks, "refs": refs, "group": group_size, "step": step, "t": time.time()}

    def collect(self, batch: dict) -> list:
        import ray

        out = {}
        for i, chunk in batch["chunks"]:
            ref = batch["refs"][i]
            for attempt in range(self.retries + 1):
                try:
                    out[i] = ray.get(ref, timeout=self.timeout)
                    break
                except _faults() as exc:
                    if attempt == self.retries:
                        raise
                    self.fault("rollout", exc, worker=i, groups=len(chunk))
                    self._revive_rollout(i)
                    ref = self.system.rollout.workers[i].generate.remote(chunk, batch["group"], batch["step"])
        return [t for i, _ in batch["chunks"] for t in out[i]]

    def wait_rollout(self, batch: dict) -> None:
        """Block until a prefetched rollout finished (weights must not change under it)."""
        import ray

        ray.wait(list(batch["refs"].values()), num_returns=len(batch["refs"]), timeout=self.timeout)

    # ------------------------------------------------------------------------------ reward
    def _pool_call(self, fn):
        import ray

        from segmentation.reward_pool import StaleWeightsError

        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (*_faults(), StaleWeightsError) as exc:
                if attempt == self.retries:
                    raise
                self.fault("reward", exc)
                # Wait for restarted actors, then give them the current weights before repeating.
                deadline = time.time() + self.timeout
                while True:
                    try:
                        ray.get([a.version.remote() for a in self.system.pool.actors], timeout=60)
                        break
                    except _faults():
                        if time.time() > deadline:
                            raise
                        time.sleep(2.0)
                if self.heads is not None:
                    self.system.pool.update_weights(self.version, self.heads, timeout_s=self.timeout)
                self.ledger.record_event(self.step, "recovered", {"role": "reward"})

    def reward(self, requests: list) -> list:
        return self._pool_call(lambda: self.system.pool.score(requests, timeout_s=self.timeout,
                                                              required_version=self.version))

    # ----------------------------------------------------------------------------- learner
    def learner_call(self, method: str, *args):
        try:
            return getattr(self.system.learners, method)(*args, timeout=self.timeout)
        except _faults() as exc:
            self.fault("learner", exc, method=method)
            raise LearnerLost(str(exc)) from exc

    def rebuild_learners(self) -> None:
        import ray

        from cluster.ray_setup import actor_options
        from learner.actor import LearnerGroup

        for w in self.system.learners.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # already dead
                pass
        cfg = self.system.cfg
        self.system.learners = LearnerGroup.start(cfg, self.system.policy_dir, self.system.envs,
                                                  options=actor_options(cfg, "learner"),
                                                  placement_group=self.system.placements.get("learner"))
        self.ledger.record_event(self.step, "recovered", {"role": "learner"})

    # ----------------------------------------------------------------------------- env
    def env_call(self, fn):
        """Driver-side env calls (sample lookup); env actors restart and retry by themselves."""
        import ray

        for attempt in range(self.retries + 1):
            try:
                return ray.get(fn(self.system.envs[attempt % len(self.system.envs)]), timeout=self.timeout)
            except _faults() as exc:
                if attempt == self.retries:
                    raise
                self.fault("env", exc)
                time.sleep(2.0)


def actor_pids(system: System) -> dict[str, list[int]]:
    """Process ids of every actor of the run (for operators, and for fault-injection tests)."""
    import ray

    def pids(handles, method):
        out = []
        for h in handles:
            try:
                out.append(int(ray.get(getattr(h, method).remote(), timeout=60)))
            except Exception:  # a dead actor has no pid to report
                out.append(-1)
        return out

    return {
        "env": pids(system.envs, "pid"),
        "reward": pids(system.pool.actors, "pid"),
        "rollout": [p for p in pids(system.rollout.workers, "pid")],
        "learner": pids(system.learners.workers, "pid"),
    }
