"""Which prompts each step trains on: a seeded order over all samples, addressed by a cursor.

The order of epoch e is a permutation drawn from (seed, e); the cursor (epoch, position) is all the
state there is, so a checkpoint stores two integers and a resumed run continues with exactly the
samples it would have seen. Datasets are interleaved by weight. Samples the ledger quarantined (bad
data) are skipped and replaced by the next ones, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Cursor:
    epoch: int = 0
    position: int = 0

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


class PromptSource:
    def __init__(self, sample_ids: list[str], seed: int, dataset_weights: dict[str, float] | None = None):
        if not sample_ids:
            raise ValueError("no training samples: every dataset is empty or was skipped as unreadable")
        self.ids = sorted(sample_ids)
        self.seed = int(seed)
        self.weights = dataset_weights or {}
        self.cursor = Cursor()
        self._order_cache: tuple[int, list[str]] | None = None

    def _order(self, epoch: int) -> list[str]:
        if self._order_cache and self._order_cache[0] == epoch:
            return self._order_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        by_ds: dict[str, list[str]] = {}
        for sid in self.ids:
            by_ds.setdefault(sid.split("/", 1)[0], []).append(sid)
        if len(by_ds) <= 1 or not self.weights:
            order = [self.ids[i] for i in rng.permutation(len(self.ids))]
        else:
            # Weighted interleave: each slot draws a dataset by weight among those not yet exhausted.
            queues = {ds: [ids[i] for i in rng.permutation(len(ids))] for ds, ids in sorted(by_ds.items())}
            order = []
            while queues:
                names = sorted(queues)
                w = np.array([self.weights.get(n, 1.0) for n in names], dtype=float)
                pick = names[int(rng.choice(len(names), p=w / w.sum()))]
                order.append(queues[pick].pop())
                if not queues[pick]:
                    del queues[pick]
        self._order_cache = (epoch, order)
        return order

    def take(self, n: int, skip: set[str] | None = None) -> tuple[list[str], int]:
        """The next n sample ids (advancing the cursor) and the epoch they belong to.

        A batch never spans two epochs; when an epoch runs short, the batch is filled from the next."""
        skip = skip or set()
        out: list[str] = []
        epoch = self.cursor.epoch
        while len(out) < n:
            order = self._order(self.cursor.epoch)
            if self.cursor.position >= len(order):
                self.cursor = Cursor(self.cursor.epoch + 1, 0)
                if not out:
                    epoch = self.cursor.epoch
                if all(s in skip for s in order):
                    raise ValueError("every sample is quarantined; nothing left to train on")
                continue
            sid = order[self.cursor.position]
            self.cursor.position += 1
            if sid not in skip:
                out.append(sid)
        return out, epoch

    def state(self) -> dict:
        return self.cursor.as_dict()

    def load_state(self, state: dict) -> None:
        self.cursor = Cursor(int(state["epoch"]), int(state["position"]))
