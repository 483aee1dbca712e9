"""How one stream may use the object store: the harvest's outputs in flight and the log's
worst case."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config import Config, ConfigError

MIB = 2**20


@dataclass(frozen=True)
class StoreBudget:
    """How one stream may use the object store of its pump's node.

    The log holds at most `capacity_chunks` chunks and the harvest at most `harvest_bytes` of
    blocks in flight; both live in the pump node's store, shared by the streams running at once.
    """

    store_bytes: int  # the object store of the pump's node
    streams: int  # streams that may run at once, sharing it
    harvest_bytes: int  # the harvest's outputs in flight, at most

    @property
    def share_bytes(self) -> int:
        return self.store_bytes // max(1, self.streams)

    def check_log(self, stream_id: str, chunk_rows: int, capacity_chunks: int,
                  row_bytes: float) -> None:
        """Refuse a log whose full capacity, plus the harvest's budget, overflows the store."""
        log_bytes = capacity_chunks * chunk_rows * row_bytes
        if log_bytes + self.harvest_bytes <= self.share_bytes:
            return
        shared = f" (its share for {self.streams} streams at a time)" if self.streams > 1 else ""
        fewer = (", or run fewer streams at once (resources.concurrent_streams)"
                 if self.streams > 1 else "")
        fit = max(1, int((self.share_bytes - self.harvest_bytes) // (chunk_rows * row_bytes)))
        raise ConfigError(
            f"stream {stream_id}: its chunks do not fit in the object store. The broadcast log "
            f"holds up to stream.capacity_chunks ({capacity_chunks}) chunks of "
            f"stream.chunk_rows ({chunk_rows}) rows x {row_bytes:.0f} bytes = "
            f"{log_bytes / MIB:.0f} MiB, and the harvest may hold "
            f"{self.harvest_bytes / MIB:.0f} MiB more (resources.harvest_object_store_mb), "
            f"but the object store of the pump's node has {self.share_bytes / MIB:.0f} MiB"
            f"{shared}. Lower stream.chunk_rows or stream.capacity_chunks (at most {fit} chunks "
            "of this size fit), or give Ray a larger object store (resources.object_store_mb "
            f"for a Ray that thresher starts, `ray start --object-store-memory` on a cluster)"
            f"{fewer}")


def store_budget(cfg: Config, store_bytes: int, streams: int) -> StoreBudget:
    """The budget of one stream on a node whose object store has `store_bytes`: the harvest gets
    `resources.harvest_object_store_mb`, or a quarter of the stream's share of the store."""
    share = store_bytes // max(1, streams)
    explicit = cfg.resources.harvest_object_store_mb
    return StoreBudget(store_bytes=int(store_bytes), streams=max(1, streams),
                       harvest_bytes=explicit * MIB if explicit else share // 4)
