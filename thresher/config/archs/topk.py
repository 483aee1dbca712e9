"""topk (Gao et al. 2024): f = ReLU(TopK_k(pre)), plus AuxK on dead latents. Also the TopK
family's shared settings and sweep key `k` (batchtopk, matryoshka)."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config.arch_spec import ArchSpec, Problems, SweepKey

# Active latents per row, read by the whole TopK family.
K = SweepKey("k", int, 32, minimum="positive", column_type="int32", below="d_sae")


@dataclass(frozen=True)
class TopKSettings:
    """train.topk (and, inherited, the TopK family's sections)."""

    # AuxK: the dead latents that reconstruct the residual (0: d_in // 2), and its loss weight
    # (1/32, Gao et al.).
    aux_k: int = 0
    aux_k_coef: float = 0.03125
    # Decode from the k active latents only (thresher.train.sparse).
    sparse_decode: bool = True

    def problems(self) -> Problems:
        return [(name, "must be >= 0") for name in ("aux_k", "aux_k_coef")
                if getattr(self, name) < 0]


# Sparse decode and back-propagation: one dense encoder matmul plus selection.
SPEC = ArchSpec("topk", TopKSettings, sweep_keys=(K,), step_cost=2.0)
