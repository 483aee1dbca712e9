"""A stream's service: its pump and broadcast log, fed by the harvest and read by its trainers.

`StreamService` is the one place where a stream's harvest meets its trainers, for both
executors. The harvest side takes harvest outputs (`Harvested`: a block, or on Ray the ref of
one, and the harvester's report) into the pump until every training row wanted is in, with
backpressure: `harvest` (a thread of its own, on Ray) waits while the log is full; `feed` (the
inline executor, one thread) returns so the trainers can step. The trainer side fetches groups
(`group`, a typed `GroupReply`), commits cursors, reports steps, restarts and curve points.
A harvest that fails is relayed to every trainer waiting on the log, a user error with its own
message. Everything is under one condition variable, so the Ray actor that wraps this class
(thresher/distributed/stream_actor.py) can serve its trainers from several threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from thresher.config import Config, StreamPlan
from thresher.errors import UserError
from thresher.harvest.report import HarvestCounters, Harvested
from thresher.stream.chunker import Chunk, Piece
from thresher.stream.log import Cursor, Group
from thresher.stream.pump import Pump
from thresher.stream.reader import EndOfStream, NotReady, fetch_group

Handle = TypeVar("Handle")
Stats = TypeVar("Stats")


@dataclass(frozen=True)
class GroupReady(Generic[Handle]):
    """The group asked for, every chunk of it in the log."""

    group: Group[Chunk[Handle]]


@dataclass(frozen=True)
class GroupPending:
    """The group is not complete yet; `log_full`: the log is full, so the trainer should
    checkpoint (its commit is what frees room)."""

    log_full: bool


@dataclass(frozen=True)
class StreamEnded:
    """The stream is finished and the trainer is past its last group."""


GroupReply = GroupReady[Handle] | GroupPending | StreamEnded


def group_of(reply: GroupReply[Handle]) -> Group[Chunk[Handle]]:
    """The group of a reply, for a reader: raises NotReady or EndOfStream as `fetch` does."""
    if isinstance(reply, GroupReady):
        return reply.group
    if isinstance(reply, StreamEnded):
        raise EndOfStream
    raise NotReady


@dataclass(frozen=True)
class Restart:
    """A trainer that started again: where it resumed and the steps it had to redo."""

    resumed_at: int
    last_step: int  # the newest step it had reported
    steps_lost: int


@dataclass(frozen=True)
class StreamProgress:
    """Where a stream is: rows harvested of those planned and wanted, each trainer's step, the
    log's fill, and the restarts so far."""

    rows: int
    planned_rows: int
    wanted_rows: int | None
    holdout_rows: int
    steps: dict[str, int]
    held: int
    peak_held: int
    capacity: int
    restarts: dict[str, tuple[Restart, ...]]


@dataclass(frozen=True)
class LogSummary:
    """A stream's broadcast log at the end: chunks appended and released, the fullest it was,
    its capacity (run.json's `log`)."""

    appended: int
    released: int
    peak_held: int
    capacity: int


class HarvestFailed(RuntimeError):
    """The harvest of a stream failed; raised to the trainers waiting on its log."""


@dataclass
class _Trainers:
    """Per trainer: its newest step, its starts and its restarts."""

    steps: dict[str, int]
    starts: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, list[Restart]] = field(default_factory=dict)


class StreamService(Generic[Handle, Stats]):
    """One stream's pump and log, between its harvest and its trainers.

    `estimate(pieces)` makes the stream statistics from the normalisation rows (`Stats`: the
    statistics inline, the ref of a task computing them on Ray).
    """

    def __init__(self, cfg: Config, stream: StreamPlan,
                 estimate: Callable[[list[Piece[Handle]]], Stats]) -> None:
        self.cfg, self.stream = cfg, stream
        self.lock = threading.Condition()
        self.pump: Pump[Handle, Stats] = Pump(cfg, stream, estimate=estimate)
        self.counters = HarvestCounters()
        self.planned_rows = 0  # the rows the stream's inputs hold (once they are open)
        self.error: str | None = None  # the harvest's failure, as trainers are told it
        self.failure: UserError | None = None  # a user error, re-raised as is
        ids = [t.trainer_id for t in stream.trainers]
        self.trainers = _Trainers(steps=dict.fromkeys(ids, 0), starts=dict.fromkeys(ids, 0),
                                  restarts={t: [] for t in ids})
        self.curve_points: list[dict[str, Any]] = []  # not yet taken by the driver

    # -- harvest side --------------------------------------------------------------------------

    @property
    def rows_wanted_in(self) -> bool:
        """Every row the trainers will read is in (the rest of the harvest is not needed)."""
        return self.pump.chunker.done

    def take(self, out: Harvested[Handle]) -> None:
        """Take one harvest output into the pump (appended to the log as it has room)."""
        with self.lock:
            self.counters.add(out.report, out.store_bytes)
            self.pump.add(out.block, out.report.rows)
            self.lock.notify_all()

    def harvest(self, outputs: Iterable[Harvested[Handle]], started: float | None = None
                ) -> HarvestCounters:
        """Take every output wanted, waiting while the log is full (backpressure), then finish
        the harvest; a failure is relayed to the trainers and raised. `started`: when the
        harvest's set-up began (`time.perf_counter()`), where it came before."""
        start = time.perf_counter() if started is None else started
        try:
            for out in outputs:
                self.take(out)
                with self.lock:
                    while self.pump.pending and self.error is None:
                        self.lock.wait(timeout=1.0)  # the log is full: trainers free room
                if self.rows_wanted_in:
                    break  # every training row wanted is in; stop the harvest early
        except BaseException as exc:
            self.fail(exc)
            raise
        self.finish(time.perf_counter() - start)
        return self.counters

    def feed(self, outputs: Iterator[Harvested[Handle]]) -> bool:
        """Take outputs while the log has room and rows are wanted, without waiting (one
        thread: the trainers step in between); finishes the harvest when they run out or are
        all in. Returns whether anything was taken or finished."""
        moved = False
        while not self.pump.harvest_done and not self.pump.pending:
            out = None if self.rows_wanted_in else next(outputs, None)
            if out is None:
                self.finish()
                return True
            self.take(out)
            moved = True
        return moved

    def finish(self, seconds: float | None = None) -> None:
        """The harvest is over: the last chunk in, the log finished once every chunk is in."""
        with self.lock:
            self.pump.finish_harvest()
            self.counters.finished_at = time.time()
            if seconds is not None:
                self.counters.seconds = seconds
            self.lock.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Record the harvest's failure; trainers waiting on the log raise it."""
        cause = self.user_error(exc)
        with self.lock:
            self.error = f"{type(cause or exc).__name__}: {cause or exc}"
            self.failure = cause
            self.lock.notify_all()

    def user_error(self, exc: BaseException) -> UserError | None:
        """The error in `exc` whose message the user can act on, if there is one."""
        return exc if isinstance(exc, UserError) else None

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure  # the user's problem, with its own message
        if self.error is not None:
            raise HarvestFailed(f"the harvest of stream {self.stream.stream_id} failed: "
                                f"{self.error}")

    # -- trainer side --------------------------------------------------------------------------

    def stats_estimate(self, timeout: float | None = 5.0) -> Stats | None:
        """The stream statistics (or the ref of their task), once the normalisation rows are
        in; None while they are not after `timeout` seconds."""
        with self.lock:
            self.lock.wait_for(lambda: self.pump.stats is not None or self.error is not None
                               or self.pump.harvest_done, timeout=timeout)
            self.raise_if_failed()
            return self.pump.stats

    def group(self, trainer_id: str, g: int, step: int, timeout: float = 2.0
              ) -> GroupReply[Handle]:
        """Group g for a trainer at `step`; waits up to `timeout` seconds for it to be
        complete (0: answers at once)."""
        with self.lock:
            self.trainers.steps[trainer_id] = step
            while True:
                self.raise_if_failed()
                try:
                    return GroupReady(fetch_group(self.pump.log, g))
                except EndOfStream:
                    return StreamEnded()
                except NotReady:
                    if timeout <= 0 or not self.lock.wait(timeout=timeout):
                        return GroupPending(log_full=self.pump.log.full)

    def commit(self, trainer_id: str, cursor: Cursor) -> None:
        with self.lock:
            self.pump.commit(trainer_id, cursor)
            self.lock.notify_all()

    def trainer_started(self, trainer_id: str, step: int) -> None:
        """A trainer (re)started at `step`; a restart records the steps it has to redo (as far
        as it reported them: a trainer reports its steps now and then, not each one)."""
        t = self.trainers
        with self.lock:
            if t.starts[trainer_id]:
                last = t.steps[trainer_id]
                t.restarts[trainer_id].append(
                    Restart(resumed_at=step, last_step=last, steps_lost=max(0, last - step)))
            t.starts[trainer_id] += 1
            t.steps[trainer_id] = step

    def report_step(self, trainer_id: str, step: int) -> None:
        with self.lock:
            self.trainers.steps[trainer_id] = max(self.trainers.steps[trainer_id], step)

    def report_curve_points(self, points: list[dict[str, Any]]) -> None:
        with self.lock:
            self.curve_points.extend(points)

    def take_curve_points(self) -> list[dict[str, Any]]:
        """The trainers' curve points since the last call (the driver is their reader)."""
        with self.lock:
            points, self.curve_points = self.curve_points, []
        return points

    def holdout(self, timeout: float | None = 600.0) -> list[Piece[Handle]]:
        """The held-out blocks (pieces holding their handles), once the harvest is over."""
        with self.lock:
            self.lock.wait_for(lambda: self.pump.log.finished or self.error is not None,
                               timeout=timeout)
            self.raise_if_failed()
            return list(self.pump.chunker.holdout)

    # -- the driver's view ---------------------------------------------------------------------

    def progress(self) -> StreamProgress:
        with self.lock:
            log = self.pump.log
            return StreamProgress(
                rows=self.counters.rows, planned_rows=self.planned_rows,
                wanted_rows=self.pump.chunker.wanted_rows,
                holdout_rows=self.cfg.stream.holdout_rows, steps=dict(self.trainers.steps),
                held=log.held, peak_held=log.counters.peak_held, capacity=log.capacity,
                restarts={t: tuple(r) for t, r in self.trainers.restarts.items()})

    def log_summary(self) -> LogSummary:
        with self.lock:
            c = self.pump.log.counters
            return LogSummary(appended=c.appended, released=c.released,
                              peak_held=c.peak_held, capacity=self.pump.log.capacity)


class LocalTrainerStream(Generic[Handle]):
    """A trainer's view of a service in this process (the inline executor's trainers, whose
    handles are the blocks themselves): a group not ready is answered at once, as one thread
    runs the harvest and every trainer in turn."""

    prefetch = False

    def __init__(self, service: StreamService[Handle, Any], trainer_id: str) -> None:
        self.service, self.trainer_id = service, trainer_id
        self.step = 0
        self.log_full = False

    def fetch(self, g: int) -> Group[Chunk[Handle]]:
        reply = self.service.group(self.trainer_id, g, self.step, timeout=0)
        if isinstance(reply, GroupPending):
            self.log_full = reply.log_full
        return group_of(reply)

    def load(self, handles: Sequence[Handle]) -> list[Handle]:
        return list(handles)

    def commit(self, cursor: Cursor) -> None:
        self.service.commit(self.trainer_id, cursor)

    def step_taken(self, step: int) -> None:
        self.step = step
        self.service.report_step(self.trainer_id, step)

    def add_curve_points(self, points: list[dict[str, Any]]) -> None:
        self.service.report_curve_points(points)
