"""The stream's service without Ray: a real synthetic harvest through the real pump and log,
trainers in threads. Backpressure holds the log at its capacity, every trainer reads every
wanted row and then the end, a failed harvest reaches a trainer waiting on the log (a user
error as itself), restarts are counted, and the threaded harvest (Ray's) cuts the same groups
as the cooperative one (inline's)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thresher
from thresher.config import ConfigError, StreamPlan, load_config, train_steps
from thresher.harvest.local import LocalHarvest
from thresher.harvest.report import Harvested
from thresher.harvest.service import (
    GroupPending,
    GroupReady,
    HarvestFailed,
    LocalTrainerStream,
    Restart,
    StreamEnded,
    StreamService,
)
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import load_pieces
from thresher.stream.log import Cursor
from thresher.stream.reader import BatchReader, EndOfStream, NotReady
from thresher.stream.stats import StreamStats, estimate_hook_stats

CAPACITY = 4
BLOCK_ROWS = 128


def synthetic_config(out: Path, **stream: int) -> dict[str, Any]:
    """Two trainers on a synthetic stream of 128-row blocks, 16 chunks of 256 rows wanted."""
    return {
        "run": {"name": "service", "out": str(out), "seed": 0},
        "source": {"backbone": {"kind": "synthetic", "n_features": 64, "d_in": 16,
                                "mean_l0": 3.0, "rows": 1 << 16, "block_rows": BLOCK_ROWS,
                                "seed": 1},
                   "hook": "synthetic"},
        "stream": {"chunk_rows": 256, "capacity_chunks": CAPACITY, "mix_chunks": 2,
                   "holdout_rows": 256, "norm_rows": 256, **stream},
        "train": {"batch_size": 128, "rows": 4096, "checkpoint_every": 4, "warmup_steps": 1,
                  "d_sae": 32, "k": 4},
        "sweep": [{"arch": "topk", "k": [2, 4]}],
        "resources": {"trainers": 2},
    }


Service = StreamService[ActivationBlock, dict[str, StreamStats]]


def service_and_outputs(tmp_path: Path) -> tuple[Service, StreamPlan, Iterator[Any]]:
    cfg = load_config(synthetic_config(tmp_path))
    (stream,) = thresher.plan(cfg).streams
    assert len(stream.trainers) == 2
    service: Service = StreamService(
        cfg, stream, estimate=lambda pieces: estimate_hook_stats(load_pieces(pieces, list)))
    return service, stream, iter(LocalHarvest(cfg, stream.source))


def read_all(service: Service, trainer_id: str, out: dict[str, Any]) -> None:
    """A trainer that commits each group as it reads it: its rows' ids, group by group."""
    g, groups = 0, []
    while True:
        reply = service.group(trainer_id, g, step=g, timeout=30.0)
        if isinstance(reply, StreamEnded):
            break
        if isinstance(reply, GroupReady):
            # Synthetic rows are one example each: their ids name them.
            ids = np.concatenate([p.block.example_id[p.start:p.stop]
                                  for chunk in reply.group.handles for p in chunk.pieces])
            groups.append(ids[reply.group.permutation()])
            g += 1
            service.commit(trainer_id, Cursor(g, 0))
    out[trainer_id] = groups


def wait_until_holding(service: Service, held: int) -> None:
    """Until the log holds `held` chunks and the harvest has one waiting for room: a state the
    harvest thread stays in until a trainer commits (a minute's wait: a hang, not a timing)."""
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        with service.lock:
            if service.pump.log.held == held and service.pump.pending:
                return
        time.sleep(0.01)
    raise AssertionError(f"the log never held {held} chunks with one waiting for room")


def watched(outputs: Iterator[Harvested[ActivationBlock]], service: Service,
            pulled_while_waiting: list[int]) -> Iterator[Harvested[ActivationBlock]]:
    """The outputs; notes each one the harvest asked for while chunks waited for room."""
    for i, out in enumerate(outputs):
        yield out
        with service.lock:
            if service.pump.pending:
                pulled_while_waiting.append(i + 1)


def test_the_harvest_waits_for_room_and_every_trainer_reads_to_the_end(tmp_path: Path) -> None:
    service, stream, outputs = service_and_outputs(tmp_path)
    pulled_while_waiting: list[int] = []
    harvest = threading.Thread(target=service.harvest, daemon=True,
                               args=(watched(outputs, service, pulled_while_waiting),))
    harvest.start()
    wait_until_holding(service, CAPACITY)  # nobody reads yet: the log is full
    assert harvest.is_alive() and not service.pump.harvest_done
    assert service.progress().held == CAPACITY
    reply = service.group("t0", 99, step=0, timeout=0)
    assert reply == GroupPending(log_full=True)

    read: dict[str, Any] = {}
    readers = [threading.Thread(target=read_all, args=(service, t.trainer_id, read))
               for t in stream.trainers]
    for reader in readers:
        reader.start()
    for thread in (*readers, harvest):
        thread.join(timeout=120)
        assert not thread.is_alive()

    # Backpressure: no output was asked for while a chunk waited for room in the log.
    assert pulled_while_waiting == []
    cfg = service.cfg
    wanted = train_steps(cfg.train) * cfg.train.batch_size
    rows = {tid: sum(len(ids) for ids in groups) for tid, groups in read.items()}
    assert rows == {"t0": wanted, "t1": wanted}  # every row wanted, then the end
    for a, b in zip(read["t0"], read["t1"], strict=True):
        np.testing.assert_array_equal(a, b)  # one broadcast: the same groups for both
    summary = service.log_summary()
    assert summary.peak_held == CAPACITY and summary.released == summary.appended
    counters = service.counters
    # The harvest stopped once the holdout and the wanted rows were in (whole blocks).
    assert counters.rows == -(-(wanted + cfg.stream.holdout_rows) // BLOCK_ROWS) * BLOCK_ROWS
    assert counters.blocks == counters.forward_calls == counters.rows // BLOCK_ROWS
    assert service.group("t0", len(read["t0"]), step=0, timeout=0) == StreamEnded()
    assert sum(p.rows for p in service.holdout(timeout=0)) == cfg.stream.holdout_rows


def test_the_threaded_and_the_cooperative_harvest_cut_the_same_groups(tmp_path: Path) -> None:
    threaded, stream, outputs = service_and_outputs(tmp_path / "a")
    harvest = threading.Thread(target=threaded.harvest, args=(outputs,), daemon=True)
    harvest.start()
    read: dict[str, Any] = {}
    readers = [threading.Thread(target=read_all, args=(threaded, t.trainer_id, read))
               for t in stream.trainers]
    for reader in readers:
        reader.start()
    for thread in (*readers, harvest):
        thread.join(timeout=120)

    # One thread: feed until the log is full, then each trainer reads what is there.
    cooperative, _, outputs = service_and_outputs(tmp_path / "b")
    readers_of = {t.trainer_id: BatchReader(LocalTrainerStream(cooperative, t.trainer_id).fetch,
                                            list, 256, hook="synthetic")
                  for t in stream.trainers}
    batches: dict[str, list[np.ndarray]] = {tid: [] for tid in readers_of}
    ended: set[str] = set()
    while len(ended) < len(readers_of):
        cooperative.feed(outputs)
        for tid, reader in readers_of.items():
            while tid not in ended:
                try:
                    leased = reader.next_batch()
                except NotReady:
                    break
                except EndOfStream:
                    ended.add(tid)
                    break
                with leased as batch:
                    batches[tid].append(batch.example_id.copy())
            cooperative.commit(tid, reader.cursor)
    assert cooperative.pump.harvest_done and cooperative.log_summary().peak_held <= CAPACITY
    # Groups of 2 chunks of 256 rows are batches of 256 rows two by two.
    for tid in readers_of:
        np.testing.assert_array_equal(np.concatenate(batches[tid]),
                                      np.concatenate(read[tid]))


def failing(outputs: Iterator[Harvested[ActivationBlock]], error: Exception,
            service: Service) -> Iterator[Harvested[ActivationBlock]]:
    """Two real outputs, then `error` once trainer t0 is waiting on the log for group 5."""
    yield next(outputs)
    yield next(outputs)
    give_up = time.monotonic() + 60  # a hang, not a timing
    while time.monotonic() < give_up:
        with service.lock:  # group() holds the lock until it waits: seen here, t0 waits
            if service.trainers.steps["t0"] == 7:
                break
        time.sleep(0.01)
    raise error


@pytest.mark.parametrize(("error", "raised", "message"), [
    (ConfigError("shard 3 is not a store: rebuild it"), ConfigError,
     "^shard 3 is not a store: rebuild it$"),
    (OSError("disk on fire"), HarvestFailed,
     "the harvest of stream s0 failed: OSError: disk on fire"),
])
def test_a_failed_harvest_reaches_the_trainer_waiting_on_the_log(
        tmp_path: Path, error: Exception, raised: type[Exception], message: str) -> None:
    service, _, outputs = service_and_outputs(tmp_path)
    seen: list[BaseException] = []

    def wait_for_group() -> None:
        try:
            service.group("t0", 5, step=7, timeout=60.0)
        except BaseException as exc:  # what the trainer gets
            seen.append(exc)

    trainer = threading.Thread(target=wait_for_group)
    trainer.start()
    with pytest.raises(type(error)):
        service.harvest(failing(outputs, error, service))
    trainer.join(timeout=60)
    (got,) = seen
    assert isinstance(got, raised)
    assert got is error if raised is ConfigError else True
    with pytest.raises(raised, match=message):
        service.holdout(timeout=0)  # and every later call


def test_restarts_count_the_steps_a_trainer_redoes(tmp_path: Path) -> None:
    service, _, _ = service_and_outputs(tmp_path)
    service.trainer_started("t0", 0)
    service.trainer_started("t1", 0)
    service.report_step("t0", 12)
    service.report_step("t0", 9)  # a late report never moves a trainer back
    service.trainer_started("t0", 8)  # resumed from its checkpoint at step 8
    service.report_step("t0", 10)
    service.trainer_started("t0", 10)
    progress = service.progress()
    assert progress.restarts == {"t0": (Restart(resumed_at=8, last_step=12, steps_lost=4),
                                        Restart(resumed_at=10, last_step=10, steps_lost=0)),
                                 "t1": ()}
    assert progress.steps == {"t0": 10, "t1": 0}


def test_curve_points_wait_for_the_driver_once(tmp_path: Path) -> None:
    service, _, _ = service_and_outputs(tmp_path)
    service.report_curve_points([{"sae_id": "a", "step": 8}])
    service.report_curve_points([{"sae_id": "a", "step": 16}])
    assert [p["step"] for p in service.take_curve_points()] == [8, 16]
    assert service.take_curve_points() == []


def test_a_harvester_actor_s_call_without_ray(tmp_path: Path) -> None:
    """HarvestWorker is a plain class: one call harvests one batch into the columns the object
    store will hold, reporting their bytes and the copies a row takes to get there (the store's
    write; one hook needs no column of its own)."""
    from thresher.distributed.harvest_worker import HarvestWorker
    from thresher.harvest.harvester import Harvester
    from thresher.modalities.contract import BlockIndexBatch

    source = load_config(synthetic_config(tmp_path)).source
    (report, nbytes), columns = HarvestWorker(source, 0.0, 1, str(tmp_path)).harvest(
        BlockIndexBatch.of(3))
    expected = Harvester(source).harvest(BlockIndexBatch.of(3))
    block = ActivationBlock.from_columns(columns)
    np.testing.assert_array_equal(block.acts, expected.acts)
    np.testing.assert_array_equal(block.example_id, expected.example_id)
    assert nbytes == sum(c.nbytes for c in columns.values())
    assert (report.rows, report.forward_calls, report.row_copies) == (BLOCK_ROWS, 1, 1)
