"""`raycat predict`'s engine on Ray: N scoring actors (scoring.Scorer), each reserving its CPUs (and
GPU), fed shards straight from the driver's listing; each shard's summary comes back as soon as
its actor has scored it.

No Ray Data operator stands between the listing and the actors: a shard is one actor call. Each
actor has up to IN_FLIGHT shards queued, so it never waits for the driver between two. An actor
that dies is restarted by Ray, which runs its unfinished calls again (max_restarts,
max_task_retries): a shard's part and summary are written whole or not at all, so a shard scored
twice is the same shard.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

from raycat.scoring import Scorer, ScoringSpec

IN_FLIGHT = 2  # shards queued per actor: one scoring, the next waiting
RESTARTS = 3  # times an actor that dies (a lost node, an OOM kill) is restarted, its calls run again


class ScorerPool:
    def __init__(self, spec: ScoringSpec, actors: int, cpus: int, gpu: bool):
        import ray

        # Started now: their model loads overlap the driver's listing.
        remote = ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0, max_restarts=RESTARTS,
                            max_task_retries=RESTARTS)(Scorer)
        self.actors = [remote.remote(spec) for _ in range(actors)]
        self._ready = [a.ready.remote() for a in self.actors]
        self.ready_at: float | None = None  # time.time() when the first actor had its model loaded

    def score(self, shards: Iterable[dict]) -> Iterator[dict]:
        """Each shard's summary, as its actor finishes it (in no fixed order)."""
        import ray

        rows = iter(shards)
        running: dict = {}  # ObjectRef -> the actor scoring it
        load = {i: 0 for i in range(len(self.actors))}
        listed_all = False
        while True:
            while not listed_all:
                free = [i for i, n in load.items() if n < IN_FLIGHT]
                if not free:
                    break
                row = next(rows, None)
                if row is None:
                    listed_all = True
                    break
                i = min(free, key=lambda k: load[k])
                running[self.actors[i].score_shard.remote(row)] = i
                load[i] += 1
            if not running:
                return
            ready, _ = ray.wait(self._ready + list(running), num_returns=1)  # (a load first: its time)
            for ref in ready:
                if ref in self._ready:  # an actor's model is loaded (for the first-shard figure)
                    self.ready_at = self.ready_at or time.time()
                    self._ready.remove(ref)
                    continue
                load[running.pop(ref)] -= 1
                yield ray.get(ref)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
