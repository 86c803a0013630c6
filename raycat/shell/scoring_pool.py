"""`raycat predict`'s engine on Ray: N scoring actors (scoring.Scorer), each reserving its CPUs,
memory (and GPU), fed shards straight from the driver's listing; each shard's summary comes back as
soon as its actor has scored it.

No Ray Data operator stands between the listing and the actors: a shard is one actor call. What
Ray Data's actor pool gave, the pool does itself:
- Work goes only to actors that are up (their model loaded): an actor Ray has not placed holds no
  shard, so more actors than the cluster holds never hang the run. While none is up, the console
  says what the actors need and what the cluster has, every 30 s after the first 20.
- An actor that dies (a lost node, an OOM kill) is restarted by Ray without limit, like Ray Data's
  pool; its shards in flight go back to the queue and to the actors that are up (Ray does not run
  them again: max_task_retries=0), and it gets work again once it answers. A shard that loses its
  actor MAX_SHARD_TRIES times fails the run, naming it (a file that kills whoever reads it).
- The run fails only when no actor is left that could come back (each died for good: a model
  that can't load), or on an error a shard raised (the store down for good).
A shard's part and summary are written whole or not at all, so a shard scored twice is the same
shard.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable, Iterator

from raycat.shell.listing import shard_of
from raycat.shell.scoring import Scorer, ScoringSpec

IN_FLIGHT = 2  # shards queued per actor: one scoring, the next waiting
MAX_SHARD_TRIES = 4  # actors a shard may lose before the run gives up on it
WAIT_FIRST_S, WAIT_EVERY_S = 20.0, 30.0  # the waiting line: first after, then every
TICK_S = 1.0  # how often the loop wakes with nothing done (for the waiting line)
PROBE_AGAIN_S = 0.5  # an actor Ray is restarting is asked again this much later


class ScoringFailed(RuntimeError):
    """No scoring actor is left, or a shard keeps losing its actor (exit 1)."""


class ScorerPool:
    def __init__(self, spec: ScoringSpec, actors: int, cpus: int, gpu: bool, memory: int = 0):
        import ray

        self.per_actor = {"CPU": cpus, **({"GPU": 1} if gpu else {}), **({"memory": memory} if memory else {})}
        # Started now: their model loads overlap the driver's listing.
        remote = ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0, memory=memory or None, max_restarts=-1,
                            max_task_retries=0)(Scorer)
        self.actors = [remote.remote(spec) for _ in range(actors)]
        self._probes = {a.ready.remote(): i for i, a in enumerate(self.actors)}  # ready() calls awaited
        self._later: dict[int, float] = {}  # actor -> when to ask again (it was restarting)
        self.up: set[int] = set()
        self.dead: dict[int, BaseException] = {}  # died for good
        self.ready_at: float | None = None  # time.time() when the first actor had its model loaded
        self.lost_calls = 0  # shards sent back to the queue because their actor died

    def _probe(self, i: int, after: float = 0.0) -> None:
        """Ask actor i whether it is up (now, or `after` seconds from now: one restarting answers
        at once that it is unavailable)."""
        self.up.discard(i)
        if after:
            self._later[i] = time.monotonic() + after
        else:
            self._probes[self.actors[i].ready.remote()] = i

    def _due_probes(self) -> float:
        """Sends the probes that are due; seconds until the next one (or TICK_S)."""
        now = time.monotonic()
        for i, at in list(self._later.items()):
            if at <= now:
                del self._later[i]
                self._probe(i)
        return min([TICK_S, *(at - now for at in self._later.values())])

    def score(self, shards: Iterable[dict], say=print) -> Iterator[dict]:
        """Each shard's summary, as its actor finishes it (in no fixed order)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        rows = iter(shards)
        again: deque = deque()  # shards whose actor died, to send first
        tries: dict[str, int] = {}
        running: dict = {}  # ObjectRef -> (actor index, row, the order it was sent in)
        sent = 0
        load = {i: 0 for i in range(len(self.actors))}
        listed_all = False
        idle_since, said_at = time.monotonic(), None
        while True:
            while True:
                free = [i for i in self.up if load[i] < IN_FLIGHT]
                if not free:
                    break
                if again:
                    row = again.popleft()
                elif not listed_all:
                    row = next(rows, None)
                    if row is None:
                        listed_all = True
                        continue
                else:
                    break
                i = min(free, key=lambda k: load[k])
                ref = self.actors[i].score_shard.remote(row)
                running[ref] = (i, row, sent)
                sent += 1
                load[i] += 1
            if listed_all and not again and not running:
                return
            if not self.up and not self._probes and not self._later:
                causes = "; ".join(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                   for e in list(self.dead.values())[:2])
                raise ScoringFailed(f"every scoring actor died and none can come back ({causes})")
            tick = self._due_probes()
            ready, _ = ray.wait(list(self._probes) + list(running), num_returns=1, timeout=max(0.01, tick))
            if not self.up:
                waited = time.monotonic() - idle_since
                if waited >= WAIT_FIRST_S and (said_at is None or time.monotonic() - said_at >= WAIT_EVERY_S):
                    said_at = time.monotonic()
                    say("raycat predict: " + self.waiting_line(waited))
            else:
                idle_since, said_at = time.monotonic(), None
            for ref in ready:
                if ref in self._probes:
                    i = self._probes.pop(ref)
                    try:
                        ray.get(ref)
                    except ActorUnavailableError:  # restarting (a lost node, a killed process): ask again
                        self._probe(i, after=PROBE_AGAIN_S)
                        continue
                    except RayActorError as e:  # died for good (its constructor failed, or killed)
                        self.dead[i] = e
                        continue
                    self.up.add(i)  # (a failed ready() is not ready: it never gets here)
                    self.ready_at = self.ready_at or time.time()
                    continue
                if ref not in running:  # a call of an actor already handled as lost
                    continue
                i, row, seq = running.pop(ref)
                load[i] -= 1
                try:
                    summary = ray.get(ref)
                except RayActorError as e:
                    # Its actor died (or was unreachable): every shard it held goes back to the front
                    # of the queue in the order it was sent (its calls run one at a time, so the first
                    # was the one in hand), to whoever is up; the actor gets work again once Ray has
                    # restarted it and it answers. Only the shard in hand at a death counts against
                    # it: the ones queued behind it never started.
                    held = sorted([(seq, r) for ref2, (j, r, seq) in running.items() if j == i]
                                  + [(seq, row)], key=lambda x: x[0])
                    for ref2 in [r2 for r2, (j, _, _) in running.items() if j == i]:
                        del running[ref2]
                    load[i] = 0
                    self.lost_calls += len(held)
                    first_row = held[0][1]
                    shard = first_row["shard"]
                    if not isinstance(e, ActorUnavailableError):
                        tries[shard] = tries.get(shard, 0) + 1
                    if tries.get(shard, 0) >= MAX_SHARD_TRIES:
                        first = (shard_of(first_row)[1] or ["?"])[0]
                        raise ScoringFailed(f"shard {shard} (from {first}): its scoring actor died {tries[shard]} "
                                            "times while scoring it; a file in it may kill whoever reads it "
                                            "(memory?)") from None
                    again.extendleft(r for _, r in reversed(held))
                    if i in self.up:
                        self._probe(i)
                    continue
                yield summary

    def waiting_line(self, waited: float) -> str:
        from raycat.shell import group_watch

        line = group_watch.waiting_line(waited, len(self.actors), self.per_actor, group_watch.free_by_node())
        return line.replace("worker(s)", "scoring actor(s)", 1)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
