"""What a harvest says about its rows: one forward's `HarvestReport`, a harvest output
(`Harvested`: the rows or their handle, with its report), a stream's `HarvestCounters`, where
it ran (`StreamPlacement`) and what its pump cost (`PumpCost`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Handle = TypeVar("Handle")

NAMED = 20  # inputs named in run.json (unreadable ones, those of dropped rows), at most


@dataclass(frozen=True)
class HarvestReport:
    """What the harvester says about one block: its forwards, examples, unreadable inputs."""

    forward_calls: int = 1
    examples: int = 0
    unreadable_examples: tuple[int, ...] = ()  # examples whose input could not be read
    rows: int = 0  # rows kept
    nonfinite_rows: int = 0  # rows dropped for NaN or Inf
    nonfinite_examples: tuple[int, ...] = ()  # the examples those rows came from
    # Copies of each row made between the backbone and where trainers read it: the NaN drop,
    # a split of several hooks into columns of their own, the object store's write.
    row_copies: int = 0


@dataclass(frozen=True)
class Harvested(Generic[Handle]):
    """One input batch's output: its block (in this process the block itself, on Ray the ref
    of its columns in the object store), the harvester's report, and the block's bytes in the
    object store (0 in this process)."""

    block: Handle
    report: HarvestReport
    store_bytes: int = 0


@dataclass
class HarvestCounters:
    """A stream's harvest, summed over its blocks (run.json's `harvest`)."""

    forward_calls: int = 0
    blocks: int = 0
    rows: int = 0
    examples: int = 0  # examples are never split between input batches, so blocks add up
    seconds: float = 0.0
    # Inputs skipped because they could not be read: named where listing found them ("a.edf:
    # why"), and the examples the CPU stage could not decode (all of them: the manifest flags
    # each; `name_unreadable` names the first in run.json).
    unreadable_listed: list[str] = field(default_factory=list)
    unreadable_examples: list[int] = field(default_factory=list)
    unreadable_named: list[str] = field(default_factory=list)
    nonfinite_rows: int = 0  # rows dropped before chunking for NaN or Inf
    nonfinite_examples: list[int] = field(default_factory=list)  # their examples, capped
    copied_rows: int = 0  # rows x HarvestReport.row_copies, summed over blocks
    store_bytes: int = 0  # object-store bytes of the harvest outputs (Ray; 0 in one process)
    # Wall-clock times (epoch seconds) the harvest started and ended: show whether the streams
    # of a run ran one after another or together.
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    def add(self, report: HarvestReport, store_bytes: int = 0) -> None:
        """Count one harvest output."""
        self.blocks += 1
        self.rows += report.rows
        self.forward_calls += report.forward_calls
        self.examples += report.examples
        self.unreadable_examples.extend(report.unreadable_examples)
        self.nonfinite_rows += report.nonfinite_rows
        self.nonfinite_examples = (self.nonfinite_examples
                                   + list(report.nonfinite_examples))[:NAMED]
        self.copied_rows += report.rows * report.row_copies
        self.store_bytes += store_bytes

    @property
    def unreadable_inputs(self) -> int:
        return len(self.unreadable_listed) + len(self.unreadable_examples)

    def to_dict(self) -> dict[str, Any]:
        named = self.unreadable_named or self.unreadable_listed[:NAMED]
        return {"forward_calls": self.forward_calls, "blocks": self.blocks, "rows": self.rows,
                "examples": self.examples, "seconds": self.seconds,
                "unreadable_inputs": self.unreadable_inputs, "unreadable_named": named,
                "nonfinite_rows": self.nonfinite_rows,
                "nonfinite_examples": self.nonfinite_examples,
                "copies_per_row": self.copied_rows / self.rows if self.rows else 0.0,
                "object_store_bytes_per_row": self.store_bytes / max(1, self.rows),
                "started_at": self.started_at,
                "finished_at": self.finished_at}


@dataclass(frozen=True)
class StreamPlacement:
    """Where a stream ran: its harvesters and what each asked for, the pump's node and the
    harvesters' nodes, the object-store budget. Inline: one harvester in this process, no
    node ids, no object store."""

    harvesters: int
    cpus_per_harvester: float
    gpus_per_harvester: float
    pump_node: str = ""
    harvester_nodes: tuple[str, ...] = ()
    object_store_mb: float = 0.0
    harvest_object_store_mb: float = 0.0


@dataclass(frozen=True)
class PumpCost:
    """What the pump's process cost: its CPU seconds and its memory growth while it streamed
    (the Ray stream actor's; inline the pump shares the process with everything, 0)."""

    pump_cpu_seconds: float = 0.0
    pump_rss_growth_bytes: int = 0
