"""Cost-based packing of sub-banks onto trainers (config.pack_trainers)."""

from __future__ import annotations

from thresher.config import SAEConfig, pack_trainers, sae_cost
from thresher.config.saes import own_arch_keys


def sae(i: int, arch: str, d_sae: int, mono: float = 0.0) -> SAEConfig:
    keys = own_arch_keys(arch, {"k": 8, "l1_coef": 1.0, "l0_coef": 1.0})
    return SAEConfig(sae_id=f"{i:02d}", arch=arch, d_sae=d_sae, arch_keys=keys, lr=1e-3, seed=i,
                     mono_coef=mono)


def loads(packed: list[list[SAEConfig]]) -> list[float]:
    return [sum(sae_cost(s) for s in group) for group in packed]


def test_cost_depends_on_width_arch_and_monoloss() -> None:
    assert sae_cost(sae(0, "topk", 2048)) == 2 * sae_cost(sae(0, "topk", 1024))
    assert sae_cost(sae(0, "relu", 1024)) > sae_cost(sae(0, "topk", 1024))  # dense backward
    assert sae_cost(sae(0, "topk", 1024, mono=0.1)) > sae_cost(sae(0, "topk", 1024))


def test_sub_banks_stay_whole_when_the_balance_allows() -> None:
    saes = [sae(i, "topk", 1024) for i in range(4)] + [sae(4 + i, "jumprelu", 1024)
                                                       for i in range(1)]
    saes += [sae(5, "topk", 4096)]
    packed = pack_trainers(saes, 2)
    assert sorted(loads(packed)) == sorted([4 * sae_cost(saes[0]) + sae_cost(saes[4]),
                                            sae_cost(saes[5])])
    for group in packed:
        kinds = {(s.arch, s.d_sae) for s in group}
        # each (arch, width) appears on one trainer only
        assert all(sum((s.arch, s.d_sae) == kind for g in packed for s in g)
                   == sum((s.arch, s.d_sae) == kind for s in group) for kind in kinds)


def test_a_heavy_sub_bank_is_split_and_every_trainer_gets_work() -> None:
    saes = [sae(i, "topk", 2048) for i in range(8)]
    packed = pack_trainers(saes, 3)
    assert len(packed) == 3 and all(packed)
    assert sorted(len(g) for g in packed) == [2, 3, 3]
    assert sorted(s.sae_id for g in packed for s in g) == [s.sae_id for s in saes]
    # more trainers than SAEs: one SAE each, no empty trainer
    assert [len(g) for g in pack_trainers(saes[:2], 4)] == [1, 1]
