"""The stream's plain classes: chunker, broadcast log schedule and release, batch reader."""

from __future__ import annotations

import numpy as np
import pytest

from tests.stream_data import reader_for, whole
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunk, Chunker, Piece, load_pieces
from thresher.stream.log import BroadcastLog, Cursor, Group, LogFull
from thresher.stream.reader import (
    BatchReader,
    BufferPool,
    EndOfStream,
    NotReady,
    example_id_entropy_bits,
    gather_group,
)
from thresher.stream.stats import estimate_hook_stats, geometric_median


def make_block(start: int, rows: int, d: int = 4) -> ActivationBlock:
    ids = np.arange(start, start + rows)
    acts = np.stack([ids, ids * 2, ids * 3, np.ones(rows)], axis=1)[:, :d].astype(np.float32)
    return ActivationBlock(acts=acts, example_id=ids.astype(np.int64),
                           position=np.zeros(rows, dtype=np.int32))


def rows_of(pieces: list[Piece[ActivationBlock]]) -> ActivationBlock:
    return load_pieces(pieces, list)  # inline, a block's handle is the block itself


def test_chunker_holds_out_whole_blocks_and_cuts_exact_chunks() -> None:
    chunker: Chunker[ActivationBlock] = Chunker(chunk_rows=10, holdout_rows=12, norm_rows=5)
    chunks = []
    start = 0
    for rows in [7, 7, 9, 13, 4]:
        chunks += chunker.add(make_block(start, rows), rows)
        start += rows
    chunks += chunker.finish()
    # the holdout is the first whole blocks reaching 12 rows: 7 + 7
    assert chunker.holdout_count == 14
    assert rows_of(chunker.holdout).example_id.tolist() == list(range(14))
    assert [c.rows for c in chunks] == [10, 10, 6]
    train_ids = np.concatenate([rows_of(list(c.pieces)).example_id for c in chunks])
    assert train_ids.tolist() == list(range(14, 40))
    # a chunk may take pieces of several blocks, and a block may feed two chunks
    assert [[(p.start, p.stop) for p in c.pieces] for c in chunks] == [
        [(0, 9), (0, 1)], [(1, 11)], [(11, 13), (0, 4)]]
    assert chunker.norm_ready and rows_of(chunker.norm).example_id.tolist() == list(range(14, 19))


def test_chunker_stops_at_wanted_rows() -> None:
    chunker: Chunker[ActivationBlock] = Chunker(chunk_rows=10, holdout_rows=1, norm_rows=5,
                                                wanted_rows=25)
    chunks = chunker.add(make_block(0, 1), 1)
    chunks += chunker.add(make_block(1, 100), 100)
    assert chunker.done
    chunks += chunker.finish()
    assert [c.rows for c in chunks] == [10, 10, 10]  # whole chunks covering >= 25 rows


def test_chunker_falls_back_to_the_holdout_for_stream_stats() -> None:
    chunker: Chunker[ActivationBlock] = Chunker(chunk_rows=10, holdout_rows=50, norm_rows=5)
    chunker.add(make_block(0, 8), 8)
    assert not chunker.norm_ready
    assert chunker.finish() == []
    assert chunker.norm_ready and rows_of(chunker.norm).example_id.tolist() == list(range(5))


def test_stream_stats_scale_and_geometric_median() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) * 3 + 5
    chunker: Chunker[ActivationBlock] = Chunker(chunk_rows=100, holdout_rows=0, norm_rows=400)
    chunker.add(ActivationBlock(x.astype(np.float32), np.arange(500), np.zeros(500, np.int32)),
                500)
    assert chunker.norm_ready
    stats = estimate_hook_stats(rows_of(chunker.norm))[""]  # a block of one unnamed hook
    scaled = x[:400] * stats.scale
    assert np.linalg.norm(scaled, axis=1).mean() == pytest.approx(np.sqrt(8), rel=1e-5)
    # The geometric median minimises the sum of distances: its gradient vanishes.
    med = geometric_median(x[:400], iters=500, tol=1e-12)
    grad = ((med - x[:400]) / np.linalg.norm(med - x[:400], axis=1, keepdims=True)).sum(0)
    assert np.linalg.norm(grad) < 1e-3
    assert np.allclose(stats.center, med, atol=1e-3)


def fill_log(log: BroadcastLog, n_chunks: int, rows: int = 8) -> None:
    for i in range(n_chunks):
        log.append(whole(make_block(i * rows, rows)), rows)
    log.finish()


def test_schedule_deals_every_chunk_once_and_is_seeded() -> None:
    def groups(seed: int) -> list[list[int]]:
        log = BroadcastLog(capacity_chunks=64, mix_chunks=3, seed=seed, trainer_ids=["a"])
        fill_log(log, 20)
        out = []
        for g in range(log.n_groups or 0):
            group = log.group(g)
            out.append(sorted(int(c.pieces[0].block.example_id[0]) // 8 for c in group.handles))
        return out

    a, b, c = groups(0), groups(0), groups(1)
    assert a == b and a != c
    assert sorted(i for g in a for i in g) == list(range(20))
    assert all(len(g) <= 3 for g in a)


def test_group_waits_for_its_superblock() -> None:
    log = BroadcastLog(capacity_chunks=8, mix_chunks=2, seed=0, trainer_ids=["a"])
    assert log.superblock == 4
    for i in range(3):
        log.append(whole(make_block(i * 8, 8)), 8)
    assert log.group(0) is None  # superblock 0 is not complete yet
    log.append(whole(make_block(24, 8)), 8)
    assert log.group(0) is not None and log.group(1) is not None
    assert log.group(2) is None


def test_log_refuses_past_capacity() -> None:
    log = BroadcastLog(capacity_chunks=4, mix_chunks=2, seed=0, trainer_ids=["a"])
    for i in range(4):
        log.append(whole(make_block(i, 1)), 1)
    with pytest.raises(LogFull):
        log.append(whole(make_block(9, 1)), 1)


def drain(reader: BatchReader) -> list[ActivationBlock]:
    """Every batch left, each kept (never released, so no array of theirs is reused)."""
    batches = []
    while True:
        try:
            batches.append(reader.next_batch().block)
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
    first = [reader.next_batch().block for _ in range(5)]
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
            log.append(whole(make_block(next_chunk * rows, rows)), rows)
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


def test_gather_is_concatenate_then_permute_and_picks_one_hook() -> None:
    """The one-copy gather of a group equals the naive concatenation and permutation."""
    a, b = make_block(0, 7), make_block(7, 9)
    two = ActivationBlock(acts=np.concatenate([b.acts, -b.acts], axis=1), example_id=b.example_id,
                          position=b.position, hook_layout=(("x", 4), ("y", 4)))
    one = ActivationBlock(acts=a.acts, example_id=a.example_id, position=a.position,
                          hook_layout=(("x", 4),))
    group = Group(index=3, handles=(Chunk((Piece(two, 5, 9),)),
                                    Chunk((Piece(one, 2, 7), Piece(two, 0, 5)))),
                  rows=14, perm_seed=(1, 2, 3))
    naive = ActivationBlock.concat([two.take(slice(5, 9)).select("x"),
                                    one.take(slice(2, 7)), two.take(slice(0, 5)).select("x")])
    naive = naive.take(group.permutation())
    gathered = gather_group(group, list, hook="x")
    np.testing.assert_array_equal(gathered.acts, naive.acts)
    np.testing.assert_array_equal(gathered.example_id, naive.example_id)
    assert gathered.hook_layout == (("x", 4),) and gathered.acts.flags.writeable


def test_prefetching_reader_cuts_the_same_batches() -> None:
    """Prefetching the next group changes when rows are gathered, never which."""
    log = BroadcastLog(capacity_chunks=64, mix_chunks=2, seed=5, trainer_ids=["a", "b"])
    fill_log(log, 11, rows=9)
    plain, ahead = reader_for(log, 8), reader_for(log, 8, prefetch=True)
    for x, y in zip(drain(plain), drain(ahead), strict=True):
        np.testing.assert_array_equal(x.acts, y.acts)
        np.testing.assert_array_equal(x.example_id, y.example_id)
    ahead.close()


def test_prefetch_of_a_group_not_yet_in_the_log_is_asked_again() -> None:
    log = BroadcastLog(capacity_chunks=4, mix_chunks=1, seed=0, trainer_ids=["a"])
    for i in range(2):
        log.append(whole(make_block(i * 4, 4)), 4)
    reader = reader_for(log, 4, prefetch=True)
    first = [reader.next_batch().block, reader.next_batch().block]  # group 1 is not in yet
    with pytest.raises(NotReady):
        reader.next_batch()
    for i in range(2, 4):
        log.append(whole(make_block(i * 4, 4)), 4)
    log.finish()
    rest = drain(reader)
    ids = sorted(np.concatenate([b.example_id for b in first + rest]).tolist())
    assert ids == list(range(16))
    reader.close()


def test_reader_counts_the_rows_it_copies() -> None:
    """Every row is gathered once; the batches that span two groups are copied again to join
    them, and only those."""
    log = BroadcastLog(capacity_chunks=64, mix_chunks=3, seed=7, trainer_ids=["a"])
    fill_log(log, 10, rows=8)  # groups of 24, 24, 24 and 8 rows
    reader = reader_for(log, 7)
    batches = drain(reader)
    ends = np.cumsum([log.group(g).rows for g in range(4)])  # type: ignore[union-attr]
    starts = np.cumsum([0] + [len(b) for b in batches])[:-1]
    spanning = [len(b) for b, s in zip(batches, starts, strict=True)
                if any(s < end < s + len(b) for end in ends)]
    assert spanning and reader.rows_out == 80 and reader.groups.gathered_rows == 80
    assert reader.joined_rows == sum(spanning)


def test_gather_lands_in_the_array_it_is_given() -> None:
    """The gather writes into `empty`'s array (a CUDA trainer passes pinned memory)."""
    made: list[np.ndarray] = []

    def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        made.append(np.full(shape, -1.0, dtype=dtype))
        return made[-1]

    a, b = make_block(0, 5), make_block(5, 6)
    group = Group(index=0, handles=(whole(a), whole(b)), rows=11, perm_seed=(0, 0, 0))
    gathered = gather_group(group, list, empty=empty)
    assert len(made) == 1 and gathered.acts is made[0]
    np.testing.assert_array_equal(gathered.acts, gather_group(group, list).acts)


def test_a_pool_hands_an_array_out_again_only_once_every_lease_is_released() -> None:
    pool = BufferPool()
    first = pool.lease((4, 3), np.dtype(np.float32))
    shared = first.share()  # a batch viewing the group's array
    first.release()
    second = pool.lease((4, 3), np.dtype(np.float32))  # `shared` still holds the first
    assert not np.shares_memory(second.array, shared.array) and pool.reused == 0
    shared.release()
    third = pool.lease((4, 3), np.dtype(np.float32))
    assert pool.reused == 1 and third.array is first.array
    assert pool.lease((5, 3), np.dtype(np.float32)).array.shape == (5, 3)  # none of that shape
    with pytest.raises(RuntimeError, match="already released"):
        shared.release()
    with pytest.raises(RuntimeError, match="already released"):
        first.share()


def test_a_leased_batch_keeps_its_rows_while_later_groups_are_gathered() -> None:
    """A batch still held is never gathered into: writing into it and gathering every later
    group leaves its rows as written, and the next reader's batches are unchanged by it."""
    log = BroadcastLog(capacity_chunks=64, mix_chunks=2, seed=1, trainer_ids=["a"])
    fill_log(log, 16, rows=8)  # 8 groups of 16 rows
    expected = drain(reader_for(log, 16))
    reader = reader_for(log, 16, prefetch=True)
    held = reader.next_batch()
    held.block.acts[:] = -7.0  # the trainer is still using the batch
    for want in expected[1:]:
        with reader.next_batch() as batch:
            np.testing.assert_array_equal(batch.acts, want.acts)
    assert (held.block.acts == -7.0).all()
    held.release()
    with pytest.raises(RuntimeError, match="already released"):
        held.release()
    reader.close()


def test_a_reader_reuses_the_arrays_of_released_batches_and_not_of_kept_ones() -> None:
    log = BroadcastLog(capacity_chunks=64, mix_chunks=2, seed=1, trainer_ids=["a"])
    fill_log(log, 16, rows=8)  # 8 groups of 16 rows
    keeper = reader_for(log, 16)
    kept = drain(keeper)  # every batch kept: no array may be reused
    assert keeper.groups.pool.reused == 0
    reader = reader_for(log, 16, prefetch=True)
    for expected in kept:  # each batch released before the next: arrays come round again
        with reader.next_batch() as batch:
            np.testing.assert_array_equal(batch.acts, expected.acts)
    assert reader.groups.pool.reused >= 4
    reader.close()


def test_a_batch_joined_from_two_groups_is_a_copy_and_holds_no_lease() -> None:
    """Batches of 6 over groups of 8: group 1 gives rows only to joined batches (copies), so
    its array is reused while every batch is still held, and no held batch changes."""
    log = BroadcastLog(capacity_chunks=64, mix_chunks=1, seed=0, trainer_ids=["a"])
    fill_log(log, 4, rows=8)
    expected = [b.acts.copy() for b in drain(reader_for(log, 6))]
    reader = reader_for(log, 6)
    held = drain(reader)
    assert reader.joined_rows > 0 and reader.groups.pool.reused == 1
    for got, want in zip(held, expected, strict=True):
        np.testing.assert_array_equal(got.acts, want)


def test_a_gather_on_threads_equals_one_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from thresher.stream import reader

    monkeypatch.setattr(reader, "SCATTER_ROWS", 3)  # pieces of 5 to 9 rows: several tasks each
    blocks = [make_block(0, 9), make_block(9, 5), make_block(14, 8)]
    group = Group(index=2, handles=tuple(whole(b) for b in blocks), rows=22, perm_seed=(4, 5, 6))
    alone = gather_group(group, list)
    with ThreadPoolExecutor(3) as threads:
        shared = gather_group(group, list, threads=threads)
    np.testing.assert_array_equal(shared.acts, alone.acts)
    np.testing.assert_array_equal(shared.example_id, alone.example_id)
    np.testing.assert_array_equal(shared.position, alone.position)
    assert sorted(shared.example_id.tolist()) == list(range(22))
