"""The stream's plain classes: chunker, broadcast log schedule and release, batch reader."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunker
from thresher.stream.log import BroadcastLog, Cursor, LogFull
from thresher.stream.reader import BatchReader, EndOfStream, NotReady, example_id_entropy_bits
from thresher.stream.stats import geometric_median


def make_block(start: int, rows: int, d: int = 4) -> ActivationBlock:
    ids = np.arange(start, start + rows)
    acts = np.stack([ids, ids * 2, ids * 3, np.ones(rows)], axis=1)[:, :d].astype(np.float32)
    return ActivationBlock(acts=acts, example_id=ids.astype(np.int64),
                           position=np.zeros(rows, dtype=np.int32))


def test_chunker_holds_out_whole_blocks_and_cuts_exact_chunks() -> None:
    chunker = Chunker(chunk_rows=10, holdout_rows=12, norm_rows=5)
    chunks = []
    start = 0
    for rows in [7, 7, 9, 13, 4]:
        chunks += chunker.add(make_block(start, rows))
        start += rows
    chunks += chunker.finish()
    # the holdout is the first whole blocks reaching 12 rows: 7 + 7
    assert chunker.holdout_count == 14
    assert chunker.holdout_block().example_id.tolist() == list(range(14))
    assert [len(c) for c in chunks] == [10, 10, 6]
    train_ids = np.concatenate([c.example_id for c in chunks])
    assert train_ids.tolist() == list(range(14, 40))
    assert chunker.stats is not None and chunker.stats[""].rows == 5


def test_chunker_stops_at_wanted_rows() -> None:
    chunker = Chunker(chunk_rows=10, holdout_rows=1, norm_rows=5, wanted_rows=25)
    chunks = chunker.add(make_block(0, 1))
    chunks += chunker.add(make_block(1, 100))
    assert chunker.done
    chunks += chunker.finish()
    assert [len(c) for c in chunks] == [10, 10, 10]  # whole chunks covering >= 25 rows


def test_stream_stats_scale_and_geometric_median() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) * 3 + 5
    chunker = Chunker(chunk_rows=100, holdout_rows=0, norm_rows=400)
    chunker.add(ActivationBlock(x.astype(np.float32), np.arange(500), np.zeros(500, np.int32)))
    assert chunker.stats is not None
    stats = chunker.stats[""]  # a block of one unnamed hook
    scaled = x[:400] * stats.scale
    assert np.linalg.norm(scaled, axis=1).mean() == pytest.approx(np.sqrt(8), rel=1e-5)
    # The geometric median minimises the sum of distances: its gradient vanishes.
    med = geometric_median(x[:400], iters=500, tol=1e-12)
    grad = ((med - x[:400]) / np.linalg.norm(med - x[:400], axis=1, keepdims=True)).sum(0)
    assert np.linalg.norm(grad) < 1e-3
    assert np.allclose(stats.center, med, atol=1e-3)


def fill_log(log: BroadcastLog, n_chunks: int, rows: int = 8) -> None:
    for i in range(n_chunks):
        log.append(make_block(i * rows, rows), rows)
    log.finish()


def test_schedule_deals_every_chunk_once_and_is_seeded() -> None:
    def groups(seed: int) -> list[list[int]]:
        log = BroadcastLog(capacity_chunks=64, mix_chunks=3, seed=seed, trainer_ids=["a"])
        fill_log(log, 20)
        out = []
        for g in range(log.n_groups or 0):
            group = log.group(g)
            out.append(sorted(int(h.example_id[0]) // 8 for h in group.handles))
        return out

    a, b, c = groups(0), groups(0), groups(1)
    assert a == b and a != c
    assert sorted(i for g in a for i in g) == list(range(20))
    assert all(len(g) <= 3 for g in a)


def test_group_waits_for_its_superblock() -> None:
    log = BroadcastLog(capacity_chunks=8, mix_chunks=2, seed=0, trainer_ids=["a"])
    assert log.superblock == 4
    for i in range(3):
        log.append(make_block(i * 8, 8), 8)
    assert log.group(0) is None  # superblock 0 is not complete yet
    log.append(make_block(24, 8), 8)
    assert log.group(0) is not None and log.group(1) is not None
    assert log.group(2) is None


def test_log_refuses_past_capacity() -> None:
    log = BroadcastLog(capacity_chunks=4, mix_chunks=2, seed=0, trainer_ids=["a"])
    for i in range(4):
        log.append(make_block(i, 1), 1)
    with pytest.raises(LogFull):
        log.append(make_block(9, 1), 1)


def reader_for(log: BroadcastLog, batch_size: int, cursor: Cursor | None = None) -> BatchReader:
    def fetch(g: int):
        if log.at_end(g):
            raise EndOfStream
        group = log.group(g)
        if group is None:
            raise NotReady
        return group

    return BatchReader(fetch, list, batch_size, cursor or Cursor())


def drain(reader: BatchReader) -> list[ActivationBlock]:
    batches = []
    while True:
        try:
            batches.append(reader.next_batch())
        except EndOfStream:
            return batches


def test_readers_see_identical_batches_covering_every_row_once() -> None:
    log = BroadcastLog(capacity_chunks=64, mix_chunks=3, seed=7, trainer_ids=["a", "b"])
    fill_log(log, 10, rows=8)  # 80 rows; batch 7 spans groups
    a, b = drain(reader_for(log, 7)), drain(reader_for(log, 7))
    assert [len(x) for x in a] == [7] * 11 + [3]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.acts, y.acts)
    ids = np.concatenate([x.example_id for x in a])
    assert sorted(ids.tolist()) == list(range(80))
    assert ids.tolist() != list(range(80))  # and they are mixed


def test_replay_from_a_cursor_gives_the_same_batches() -> None:
    log = BroadcastLog(capacity_chunks=64, mix_chunks=2, seed=3, trainer_ids=["a"])
    fill_log(log, 9, rows=10)
    reader = reader_for(log, 6)
    first = [reader.next_batch() for _ in range(5)]
    cursor = reader.cursor
    rest = drain(reader)
    replay = drain(reader_for(log, 6, cursor))
    assert len(first) == 5
    assert len(rest) == len(replay)
    for x, y in zip(rest, replay, strict=True):
        np.testing.assert_array_equal(x.example_id, y.example_id)


def test_slow_trainer_bounds_the_log_and_holds_release() -> None:
    """A pump, a fast and a deliberately slow trainer, interleaved step by step."""
    capacity, rows = 8, 4
    log = BroadcastLog(capacity_chunks=capacity, mix_chunks=2, seed=0, trainer_ids=["fast", "slow"])
    readers = {"fast": reader_for(log, 4), "slow": reader_for(log, 4)}
    speed = {"fast": 5, "slow": 1}
    done = {"fast": False, "slow": False}
    released_at: list[tuple[int, dict[str, Cursor]]] = []
    next_chunk, total_chunks = 0, 40
    while not all(done.values()):
        while next_chunk < total_chunks and not log.full:
            log.append(make_block(next_chunk * rows, rows), rows)
            next_chunk += 1
        if next_chunk == total_chunks and not log.finished:
            log.finish()
        assert log.held <= capacity
        for name, reader in readers.items():
            for _ in range(speed[name]):
                if done[name]:
                    break
                try:
                    reader.next_batch()
                except NotReady:
                    break
                except EndOfStream:
                    done[name] = True
            # every trainer checkpoints and commits after its turn
            cursor = Cursor(2**62) if done[name] else reader.cursor
            before = log.counters.released
            log.commit(name, cursor)
            if log.counters.released > before:
                released_at.append((log._released_groups, dict(log.committed)))
    assert log.counters.peak_held <= capacity
    assert log.counters.released == total_chunks
    # a group is released only once every trainer's committed cursor is past it
    for released_groups, committed in released_at:
        assert all(c.group >= released_groups for c in committed.values())
    # the slow trainer really held the fast one back: the log filled up
    assert log.counters.peak_held == capacity


def test_released_group_cannot_be_read_again() -> None:
    log = BroadcastLog(capacity_chunks=4, mix_chunks=2, seed=0, trainer_ids=["a"])
    fill_log(log, 4)
    log.commit("a", Cursor(1, 0))
    with pytest.raises(ValueError, match="released"):
        log.group(0)
    with pytest.raises(KeyError, match="unknown trainer"):
        log.commit("zz", Cursor(1, 0))


def test_example_id_entropy() -> None:
    assert example_id_entropy_bits(np.zeros(64, dtype=np.int64)) == 0.0
    assert example_id_entropy_bits(np.arange(64)) == pytest.approx(6.0)
