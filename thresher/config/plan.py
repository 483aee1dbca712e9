"""The plan of a run: its streams, their hooks, and the SAEs of each packed onto trainer actors.

A stored source's hooks and description come from its store's header, which config does not
read (it imports no stage): the caller passes them in (`thresher.plan` reads them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from thresher.config.archs import ARCH_SPEC
from thresher.config.files import run_dir_of
from thresher.config.kinds import modality_spec_of
from thresher.config.resources import harvest_resources
from thresher.config.saes import MONO_STEP_COST, SAEConfig
from thresher.config.schema import Config, ConfigError, SourceConfig, TrainConfig
from thresher.config.sweep import expand_sweep, fmt


def sae_cost(sae: SAEConfig) -> float:
    """Relative cost of one training step: the width times the arch's matmul count."""
    per_width = ARCH_SPEC[sae.arch].step_cost + (MONO_STEP_COST if sae.mono_coef else 0.0)
    return float(sae.d_sae) * per_width


@dataclass(frozen=True)
class StoredStore:
    """What a plan needs of a stored source's store, read from its header by the caller."""

    hooks: tuple[str, ...]  # the hooks it replays (the source's, or all the store holds)
    description: str  # its line of the plan: path, rows, width, hooks


@dataclass(frozen=True)
class TrainerPlan:
    trainer_id: str
    hook: str  # every SAE of a trainer trains on this hook of its stream
    saes: tuple[SAEConfig, ...]


@dataclass(frozen=True)
class StreamPlan:
    stream_id: str
    source: SourceConfig
    hooks: tuple[str, ...]  # the hooks harvested, in block column order
    trainers: tuple[TrainerPlan, ...]
    store: StoredStore | None = None  # a stored source's store

    @property
    def saes(self) -> list[SAEConfig]:
        return [sae for trainer in self.trainers for sae in trainer.saes]


@dataclass(frozen=True)
class Plan:
    config: Config
    streams: tuple[StreamPlan, ...]

    @property
    def trainers(self) -> list[TrainerPlan]:
        return [trainer for stream in self.streams for trainer in stream.trainers]

    def describe(self) -> str:
        cfg = self.config
        res = cfg.resources
        lines = [f"run {cfg.run.name!r} -> {run_dir_of(cfg)}  (seed {cfg.run.seed}); "
                 f"{len(self.streams)} stream(s), {len(self.trainers)} trainer actor(s), "
                 f"{sum(len(s.saes) for s in self.streams)} SAE(s)"]
        if len(self.streams) > 1:
            lines.append(f"streams at a time: {res.concurrent_streams or 'as resources allow'}")
        for stream in self.streams:
            src = stream.source
            harvest = harvest_resources(cfg, src)
            n_saes = len(stream.saes)
            if stream.store is not None:
                what = f"stored {stream.store.description}"
            else:
                what = src.backbone.describe()
            if modality_spec_of(src.backbone.kind).inputs:
                what += (f" @ {', '.join(stream.hooks)}, {src.inputs.describe()}, batch "
                         f"{src.batch_size}")
            lines += [
                f"stream {stream.stream_id}: {what}",
                f"  harvest: 1 pass for {len(stream.hooks)} hook(s), {harvest.harvesters} "
                f"harvester actor(s) x {harvest.cpus_per_harvester:g} CPU, "
                f"{harvest.gpus_per_harvester:g} GPU",
                f"  stream: chunks of {cfg.stream.chunk_rows} rows, log capacity "
                f"{cfg.stream.capacity_chunks} chunks, {cfg.stream.mix_chunks} chunks per batch "
                f"group, {cfg.stream.holdout_rows} held-out rows",
                f"  train: {n_saes} SAE(s) on {len(stream.trainers)} trainer actor(s) x "
                f"{res.cpus_per_trainer:g} CPU, {res.gpus_per_trainer:g} GPU; "
                f"{_rows_each(cfg.train)}, batch {cfg.train.batch_size}",
            ]
            for trainer in stream.trainers:
                lines.append(f"  trainer {trainer.trainer_id} @ {trainer.hook}:")
                for sae in trainer.saes:
                    hyper = " ".join(f"{k}={fmt(v)}" for k, v in sae.plan_values().items())
                    lines.append(f"    {sae.sae_id:<28} {sae.arch:<5} {hyper}")
        return "\n".join(lines)


def train_steps(train: TrainConfig) -> int:
    """Steps each SAE takes: train.rows in whole batches, rounded up."""
    return -(-train.rows // train.batch_size)


def _rows_each(train: TrainConfig) -> str:
    """Rows per SAE as trained: whole batches, so train.rows is rounded up to them (said so)."""
    steps = train_steps(train)
    if steps * train.batch_size == train.rows:
        return f"{train.rows} rows each"
    return (f"{steps * train.batch_size} rows each (train.rows {train.rows} rounded up to "
            f"{steps} whole batches)")


def pack_trainers(saes: list[SAEConfig], n_trainers: int) -> list[list[SAEConfig]]:
    """Spread SAEs over trainers so each carries about the same cost (`sae_cost`).

    SAEs of one (arch, d_sae) step as one sub-bank, so packing moves whole sub-banks; a sub-bank
    costing more than a trainer's fair share (total / trainers) is split into near-equal parts
    first, and parts are split further until every trainer can get one. Then greedy
    longest-processing-time packing of the parts, deterministic.
    """
    n = max(1, min(n_trainers, len(saes)))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, sae in enumerate(saes):
        groups.setdefault((sae.arch, sae.d_sae), []).append(i)
    fair = sum(sae_cost(s) for s in saes) / n
    parts: list[list[int]] = []
    for members in groups.values():
        cost = sum(sae_cost(saes[i]) for i in members)
        pieces = min(len(members), max(1, math.ceil(cost / fair - 1e-9)))
        parts += [list(chunk) for chunk in _split_evenly(members, pieces)]
    while len(parts) < n:
        splittable = [p for p in parts if len(p) > 1]
        if not splittable:
            break
        largest = max(splittable, key=lambda p: sum(sae_cost(saes[i]) for i in p))
        parts.remove(largest)
        parts += [list(chunk) for chunk in _split_evenly(largest, 2)]

    def part_cost(part: list[int]) -> float:
        return sum(sae_cost(saes[i]) for i in part)

    order = sorted(parts, key=lambda p: (-part_cost(p), saes[p[0]].arch, p[0]))
    loads = [0.0] * n
    bins: list[list[int]] = [[] for _ in range(n)]
    for part in order:
        t = min(range(n), key=lambda j: (loads[j], j))
        bins[t] += part
        loads[t] += part_cost(part)
    return [[saes[i] for i in sorted(b)] for b in bins if b]


def _split_evenly(items: list[int], pieces: int) -> list[list[int]]:
    size, extra = divmod(len(items), pieces)
    out, start = [], 0
    for p in range(pieces):
        end = start + size + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def make_plan(cfg: Config, stores: Mapping[str, StoredStore] | None = None) -> Plan:
    """Streams with their hooks, and per stream `resources.trainers` trainer actors (at least
    one per hook that has SAEs), each holding SAEs of one hook packed by cost.

    `stores`: each stored source's store by stream id (`thresher.plan` reads them)."""
    stores = dict(stores or {})
    for source in cfg.sources:
        if source.backbone.replays_store and source.name not in stores:
            raise ConfigError(f"stream {source.name!r} replays a store whose header this plan "
                              "was not given; plan the config with thresher.plan(config)")
    hooks = {source.name: stores[source.name].hooks if source.name in stores else source.hooks
             for source in cfg.sources}
    saes = expand_sweep(cfg, hooks)
    streams, n_trainers = [], 0
    for source in cfg.sources:
        by_hook = {hook: [s for s in saes if s.stream_id == source.name and s.hook == hook]
                   for hook in hooks[source.name]}
        by_hook = {hook: members for hook, members in by_hook.items() if members}
        shares = _trainer_shares({h: sum(map(sae_cost, m)) for h, m in by_hook.items()},
                                 cfg.resources.trainers)
        trainers = []
        for hook, members in by_hook.items():
            for group in pack_trainers(members, shares[hook]):
                trainers.append(TrainerPlan(trainer_id=f"t{n_trainers}", hook=hook,
                                            saes=tuple(group)))
                n_trainers += 1
        streams.append(StreamPlan(stream_id=source.name, source=source,
                                  hooks=hooks[source.name], trainers=tuple(trainers),
                                  store=stores.get(source.name)))
    return Plan(config=cfg, streams=tuple(streams))


def _trainer_shares(costs: dict[str, float], n_trainers: int) -> dict[str, int]:
    """Trainers per hook: one each, the rest in proportion to cost (largest remainders)."""
    shares = dict.fromkeys(costs, 1)
    spare = n_trainers - len(costs)
    total = sum(costs.values())
    if spare <= 0 or total <= 0:
        return shares
    exact = {h: spare * c / total for h, c in costs.items()}
    for h in costs:
        shares[h] += math.floor(exact[h])
    left = n_trainers - sum(shares.values())
    for h in sorted(costs, key=lambda h: exact[h] - math.floor(exact[h]), reverse=True)[:left]:
        shares[h] += 1
    return shares
