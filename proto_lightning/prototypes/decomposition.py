"""Decompose a linear head V (C, D) into k part-prototypes per class with sum_i p~_i = v_c exactly.

Tan, Zhou & Chen (ICML 2024), docs/method.md:
  1. discovery   F_c ~ E P by NMF, or semi-NMF for signed features (`nmf.py`), P = (p_1..p_k) the
                 part bases, E's columns the part maps;
  2. coefficients alpha = argmin ||v_c - sum_i alpha_i p_i||^2 (minimum-norm least squares, pinv);
  3. refinement  R = v_c - sum_i alpha_i p_i is distributed: p~_i = alpha_i p_i + r_i, sum_i r_i = R.

Three objectives choose the r_i (`refinement.objective`); `paper` is the default, measured best on
the quick-start (README, "The post-hoc part-prototype network").

`heatmap_cosine`, ours, with r_i = beta_i R and sum_i beta_i = 1: a prototype stays interpretable when its
heatmap on the class's training features, F_c p~_i (one value per patch), still points where its
NMF part map E_i does, so beta minimises J(beta) = mean_i (1 - cos(F_c p~_i, E_i)). Cosine is
scale-free (NMF's scale and alpha do not matter), which is also why beta must be bounded: with
sum_i beta_i = 1 alone, J is flat along directions where two betas grow without bound in opposite
signs and the prototypes blow up. Constraints (config `refinement.constraint`):
  - `simplex` (default): beta_i >= 0 and sum_i beta_i = 1, every prototype takes a share of the
    residual; parametrised as beta = softmax(z_1..z_{k-1}, 0);
  - `sum_to_one`: sum_i beta_i = 1 with |b_i| <= `beta_bound` on the k - 1 free coordinates,
    beta = (b_1..b_{k-1}, 1 - sum b).
Both are built into the parametrisation, so Nelder-Mead (scipy) runs on free variables starting at
the even split beta_i = 1/k, and the best point it returns is never worse than that start.
`objective=even` skips the optimisation (r_i = R / k).

`paper` is step 3 as the authors describe it (HKUST SMART Lab post of 2024-06-08 on the ICML paper):
split R into r_1..r_k with sum_i r_i = R minimising sum_i ||Norm(F p_i) - Norm(F r_i)||^2, Norm the L2
normalisation of a heatmap over one image's H W patches. Under r_i = beta_i R that objective is
degenerate: Norm(F beta_i R) = sign(beta_i) Norm(F R), so J only sees the signs of beta (constant on
the whole simplex). We therefore let each r_i also move along its own base direction:
    r_i = beta_i (R - sum_j m_j) + m_i,   m_j = s_j ||R|| p_j / ||p_j||,   |s_j| <= `shift_bound`,
so sum_i r_i = R for every (beta, s) (sum_i beta_i = 1), s = 0 is the plain split r_i = beta_i R
(the even start), and the 2k - 1 free variables keep Nelder-Mead cheap. The shift is bounded in
units of ||R||, since J is scale-free and would otherwise reward |s_i| -> infinity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.optimize import minimize

from proto_lightning.errors import ConfigValueError
from proto_lightning.prototypes.features import ClassBatch, FeatureStore
from proto_lightning.prototypes.nmf import METHODS, factorise
from proto_lightning.settings import require_choice

log = logging.getLogger(__name__)

OBJECTIVES = ("heatmap_cosine", "even", "paper")


@dataclass
class HeadDecomposition:
    """Everything the decomposition found, per class c and prototype i."""

    prototypes: torch.Tensor  # (C, k, D) p~, sum over k equals V
    bases: torch.Tensor  # (C, k, D) NMF part bases P
    alpha: torch.Tensor  # (C, k)
    beta: torch.Tensor  # (C, k), rows sum to 1
    shift: torch.Tensor  # (C, k) s, moves along the bases (objective `paper`; 0 otherwise)
    residual_norm: torch.Tensor  # (C,) ||v_c - sum_i alpha_i p_i|| before refinement
    objective_even: torch.Tensor  # (C,) J at beta = 1/k
    objective_refined: torch.Tensor  # (C,) J at the chosen beta
    nmf_objective: torch.Tensor  # (C,) 0.5 ||F_c - E P||^2

    @classmethod
    def concatenate(cls, parts: Sequence[HeadDecomposition]) -> HeadDecomposition:
        """Join decompositions of consecutive class ranges (DDP ranks' shares) in order."""
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def relative_head_error(self, V: torch.Tensor) -> float:
        """||V - V~||_F / ||V||_F with V~_c = sum_i p~_i."""
        return relative_head_error(V, self.prototypes)


def relative_head_error(
    V: torch.Tensor, prototypes: torch.Tensor, dtype: torch.dtype = torch.float64
) -> float:
    """||V - V~||_F / ||V||_F for a head V (C, D) and prototypes (C, k, D), V~_c = sum_i p~_i, in `dtype`."""
    V = V.detach().to(dtype)
    return float((V - prototypes.detach().to(dtype).sum(1)).norm() / V.norm())


def least_squares_alpha(P: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """alpha (C, k) minimising ||v_c - P_c^T alpha_c|| for P (C, k, D), V (C, D), float64.

    The minimum-norm solution (numpy.linalg.lstsq's), from the SVD pseudo-inverse, so a rank-deficient
    basis (a dead NMF component: a zero row of P) gets alpha_i = 0 on every device. On CUDA
    `torch.linalg.lstsq` has only the `gels` driver, which assumes full rank and gives inf/NaN there.
    """
    A = P.transpose(1, 2).double()  # (C, D, k)
    return (torch.linalg.pinv(A) @ V.double().unsqueeze(-1)).squeeze(-1)


@dataclass
class ClassMaps:
    """One class's heatmaps on its own training patches (float64, on the CPU): all that refinement
    and projection need once the class's features F_c are released (`class_maps`)."""

    A: torch.Tensor  # (N, k) f_j . p_i, the NMF bases' heatmaps
    g: torch.Tensor  # (N,) f_j . R, the residual's
    sq: torch.Tensor  # (N,) ||f_j||^2
    E: torch.Tensor  # (N, k) the NMF part maps
    patches_per_image: int  # H W

    @property
    def images(self) -> int:
        """n_c, the class's images."""
        return len(self.g) // self.patches_per_image


def class_maps(
    F: torch.Tensor,
    E: torch.Tensor,
    P: torch.Tensor,
    R: torch.Tensor,
    patches_per_image: int,
    chunk: int = 16384,
) -> ClassMaps:
    """The heatmaps of a class's features F (N, D) (on any device) under its bases P (k, D) and
    residual R (D,), computed in float64 in chunks of rows (no float64 copy of F), kept on the CPU."""
    B = torch.cat([P.double(), R[None].double()]).to(F.device).T  # (D, k + 1)
    parts = [F.new_zeros(0, len(P) + 2, dtype=torch.float64)]
    for f in F.split(chunk):  # each chunk converted once: (rows, k + 1) maps and ||f||^2
        f = f.double()
        parts.append(torch.cat([f @ B, f.pow(2).sum(1, keepdim=True)], 1))
    maps = torch.cat(parts).cpu()  # (N, k + 2)
    return ClassMaps(maps[:, :-2], maps[:, -2], maps[:, -1], E.cpu().double(), patches_per_image)


class HeatmapCosine:
    """J(beta) = mean_i (1 - cos(alpha_i A_i + beta_i g, E_i)) with A = F P^T, g = F r, from inner products.

    All k x k statistics are precomputed once, so one evaluation costs O(k) and Nelder-Mead is cheap.
    """

    def __init__(self, maps: ClassMaps, alpha: torch.Tensor) -> None:
        """From a class's heatmaps (`class_maps`) and alpha (k,)."""
        A, g, E = maps.A, maps.g, maps.E  # (N, k), (N,), (N, k)
        self.alpha = alpha.double().cpu().numpy()
        self.AE = (A * E).sum(0).numpy()  # (k,)
        self.gE = (g[:, None] * E).sum(0).numpy()
        self.AA = (A * A).sum(0).numpy()
        self.Ag = (A * g[:, None]).sum(0).numpy()
        self.gg = float(g @ g)
        self.EE = np.sqrt((E * E).sum(0).numpy())

    @classmethod
    def of_features(
        cls,
        F: torch.Tensor,
        E: torch.Tensor,
        P: torch.Tensor,
        alpha: torch.Tensor,
        r: torch.Tensor,
    ) -> HeatmapCosine:
        """From the class's features F (N, D), part maps E (N, k), bases P, alpha and residual r."""
        return cls(class_maps(F, E, P, r, 1), alpha)

    def __call__(self, beta: np.ndarray) -> float:
        a = self.alpha
        dot = a * self.AE + beta * self.gE
        norm = np.sqrt(
            np.maximum(a * a * self.AA + 2 * a * beta * self.Ag + beta * beta * self.gg, 1e-300)
        )
        return float(np.mean(1.0 - dot / (norm * np.maximum(self.EE, 1e-300))))


def unit_rows(P: torch.Tensor) -> torch.Tensor:
    """P (..., k, D) with each row divided by its L2 norm; a zero row (a dead NMF base) stays zero."""
    norms = P.norm(dim=-1, keepdim=True)  # (..., k, 1)
    return torch.where(norms > 0, P / norms.clamp_min(1e-300), torch.zeros_like(P))


def residual_split(
    beta: torch.Tensor, shift: torch.Tensor, P: torch.Tensor, R: torch.Tensor
) -> torch.Tensor:
    """r (..., k, D), r_i = beta_i (R - sum_j m_j) + m_i, m_j = s_j ||R|| p_j / ||p_j||; sum_i r_i = R.

    beta, shift (..., k); P (..., k, D) the bases; R (..., D) the residual. s = 0 gives beta_i R.
    """
    scale = R.norm(dim=-1)[..., None, None]  # (..., 1, 1) ||R||
    moved = shift.unsqueeze(-1) * scale * unit_rows(P)  # (..., k, D) m_j
    return beta.unsqueeze(-1) * (R.unsqueeze(-2) - moved.sum(-2, keepdim=True)) + moved


def split_weights(beta: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """W (k, k + 1): r_i of `residual_split` is W_i . (R, m^_1, .., m^_k) with m^_j = ||R|| p_j / ||p_j||,
    W_i = (beta_i, s_i e_i - beta_i s)."""
    return np.concatenate([beta[:, None], np.diag(shift) - np.outer(beta, shift)], 1)


def basis_maps(maps: ClassMaps, P: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """M (N, k + 1), the heatmaps of (R, m^_1, .., m^_k) (`split_weights`) from a class's maps; a
    dead base (p_j = 0) has a zero map."""
    P, R = P.double().cpu(), R.double().cpu()
    norms = P.norm(dim=1)  # (k,)
    scale = torch.where(norms > 0, R.norm() / norms.clamp_min(1e-300), torch.zeros_like(norms))
    return torch.cat([maps.g[:, None], maps.A * scale], 1)


def prototype_heatmaps(
    maps: ClassMaps,
    P: torch.Tensor,
    R: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    shift: torch.Tensor,
) -> torch.Tensor:
    """f_j . p~_i (N, k) on the class's training patches, p~_i = alpha_i p_i + r_i, from its maps
    (float64): what the projection ranks once the features are gone."""
    W = torch.from_numpy(split_weights(beta.double().numpy(), shift.double().numpy()))  # (k, k + 1)
    return maps.A * alpha.double() + basis_maps(maps, P, R) @ W.T


class NormalisedHeatmaps:
    """J(beta, s) = mean over images and i of ||Norm(F p_i) - Norm(F r_i)||^2 (the `paper` objective).

    Norm divides a heatmap by its L2 norm over one image's H W patches (a zero heatmap stays zero).
    F r_i combines the k + 1 maps M = F (R, ||R|| p_1 / ||p_1||, ..)^T with the weights
    W_i = (beta_i, s_i e_i - beta_i s) of `residual_split`, and with T_i = Norm(F p_i):
        ||T_i - Norm(M W_i)||^2 = ||T_i||^2 + [M W_i != 0] - 2 T_i . M W_i / ||M W_i||,
    where, per image n, ||M_n W_i||^2 = W_i G_n W_i^T (G_n = M_n^T M_n, (k+1, k+1)) and
    T_ni . M_n W_i = (T_n^T M_n)_i . W_i. Those per-image statistics are computed once, so an
    evaluation costs O(n k^3) instead of O(n H W k^2): H W times less, whatever the map size.
    """

    def __init__(self, maps: ClassMaps, P: torch.Tensor, R: torch.Tensor) -> None:
        """From a class's heatmaps (`class_maps`), its bases P (k, D) and residual R (D,)."""
        n, hw, k = maps.images, maps.patches_per_image, maps.A.shape[1]
        M = basis_maps(maps, P, R).reshape(n, hw, k + 1)  # (n, HW, k + 1)
        T = torch.from_numpy(normalise(maps.A.reshape(n, hw, k).numpy()))  # (n, HW, k)
        self.gram = (M.transpose(1, 2) @ M).numpy()  # (n, k + 1, k + 1)
        self.cross = (T.transpose(1, 2) @ M).numpy()  # (n, k, k + 1)
        self.target_sq = (T * T).sum(1).numpy()  # (n, k): 1, or 0 for a zero heatmap

    @classmethod
    def of_features(
        cls, F: torch.Tensor, patches_per_image: int, P: torch.Tensor, R: torch.Tensor
    ) -> NormalisedHeatmaps:
        """From the class's features F (n H W, D), its bases P (k, D) and residual R (D,)."""
        E = F.new_zeros(len(F), len(P))
        return cls(class_maps(F, E, P, R, patches_per_image), P, R)

    def __call__(self, beta: np.ndarray, shift: np.ndarray) -> float:
        W = split_weights(beta, shift)  # (k, k + 1)
        squared = np.einsum("ij,njl,il->ni", W, self.gram, W)  # (n, k) ||M W_i||^2
        norm = np.sqrt(np.maximum(squared, 0.0))
        dot = np.einsum("nij,ij->ni", self.cross, W)  # (n, k) T_i . M W_i
        live = norm > 0
        terms = self.target_sq + live - 2 * np.where(live, dot / np.where(live, norm, 1.0), 0.0)
        return float(terms.mean())


def normalise(heatmaps: np.ndarray) -> np.ndarray:
    """Heatmaps (n, HW, k), each divided by its L2 norm over one image's HW patches (zero stays zero)."""
    norms = np.linalg.norm(heatmaps, axis=1, keepdims=True)  # (n, 1, k)
    return heatmaps / np.where(norms > 0, norms, 1.0)


CONSTRAINTS = ("simplex", "sum_to_one")


@dataclass(frozen=True)
class NMFSettings:
    """Discovery (`model.nmf`): method (auto | nmf | seminmf), HALS iterations and tolerance,
    classes factorised together."""

    method: str = "auto"
    max_iter: int = 200
    tol: float = 1e-4
    classes_per_batch: int = 16

    def __post_init__(self) -> None:
        require_choice(self.method, METHODS, "model.nmf.method")
        if self.classes_per_batch < 1:
            raise ConfigValueError(
                f"model.nmf.classes_per_batch must be >= 1, got {self.classes_per_batch}"
            )


@dataclass(frozen=True)
class RefinementSettings:
    """Distribution of the residual (`model.refinement`): objective, constraint, bounds, Nelder-Mead's budget."""

    objective: str = "paper"
    constraint: str = "simplex"
    beta_bound: float = 1.0
    shift_bound: float = 1.0
    max_iter: int = 2000
    tol: float = 1e-8

    def __post_init__(self) -> None:
        require_choice(self.objective, OBJECTIVES, "model.refinement.objective")
        require_choice(self.constraint, CONSTRAINTS, "model.refinement.constraint")


def full_beta(free: np.ndarray, constraint: str) -> np.ndarray:
    """Free variables (k - 1,) -> beta (k,) with sum 1 (and beta >= 0 for `simplex`)."""
    if constraint == "simplex":
        z = np.append(free, 0.0)
        e = np.exp(z - z.max())
        return e / e.sum()
    return np.append(free, 1.0 - free.sum())


def refine_beta(objective: HeatmapCosine, k: int, settings: RefinementSettings) -> np.ndarray:
    """Nelder-Mead (scipy) over the k - 1 free variables from the even split; never worse than it."""
    even = np.full(k, 1.0 / k)
    if settings.objective == "even" or k == 1:
        return even
    constraint, bound = settings.constraint, settings.beta_bound
    start = np.zeros(k - 1) if constraint == "simplex" else even[:-1]
    bounds = None if constraint == "simplex" else [(-bound, bound)] * (k - 1)
    result = _nelder_mead(
        lambda free: objective(full_beta(free, constraint)), start, bounds, settings
    )
    beta = full_beta(result, constraint)
    return beta if objective(beta) <= objective(even) else even


def refine_split(
    objective: NormalisedHeatmaps, k: int, settings: RefinementSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(beta, s) by Nelder-Mead over the 2k - 1 free variables from (1/k, 0); never worse than it."""
    even, still = np.full(k, 1.0 / k), np.zeros(k)
    if k == 1:
        return even, still
    constraint = settings.constraint
    beta_start = np.zeros(k - 1) if constraint == "simplex" else even[:-1]
    beta_bounds = (
        (None, None) if constraint == "simplex" else (-settings.beta_bound, settings.beta_bound)
    )
    bounds = [beta_bounds] * (k - 1) + [(-settings.shift_bound, settings.shift_bound)] * k
    result = _nelder_mead(
        lambda free: objective(full_beta(free[: k - 1], constraint), free[k - 1 :]),
        np.concatenate([beta_start, still]),
        bounds,
        settings,
    )
    beta, shift = full_beta(result[: k - 1], constraint), result[k - 1 :]
    return (beta, shift) if objective(beta, shift) <= objective(even, still) else (even, still)


def _nelder_mead(fun, start: np.ndarray, bounds, settings: RefinementSettings) -> np.ndarray:
    """scipy's Nelder-Mead from `start` within `bounds` (None: unbounded), with the configured budget."""
    return minimize(
        fun,
        start,
        method="Nelder-Mead",
        bounds=bounds,
        options={"maxiter": settings.max_iter, "xatol": settings.tol, "fatol": settings.tol},
    ).x


@dataclass
class FactorisedBatch:
    """A class batch after discovery and least squares: all that refinement and projection need,
    its features already released (the heatmaps of `class_maps` stand in for them)."""

    classes: list[int]
    P: torch.Tensor  # (C_b, k, D) float64 NMF bases
    alpha: torch.Tensor  # (C_b, k) float64
    residual: torch.Tensor  # (C_b, D) float64 R = v_c - sum_i alpha_i p_i
    nmf_objective: torch.Tensor  # (C_b,)
    maps: list[ClassMaps]


def factorise_batch(
    F: torch.Tensor,
    counts: Sequence[int],
    V_b: torch.Tensor,
    classes: Sequence[int],
    k: int,
    patches_per_image: int,
    settings: NMFSettings = NMFSettings(),
    seed: int = 0,
) -> FactorisedBatch:
    """Discovery (NMF, batched over the classes and seeded by the first class) and least squares
    for a class batch F (C_b, N_max, D) on its device, zero-padded past counts[i] patches; V_b (C_b, D)."""
    found = factorise(
        F, k, settings.method, max_iter=settings.max_iter, tol=settings.tol, seed=seed + classes[0]
    )
    V_b = V_b.to(F.device)
    alpha = least_squares_alpha(found.P, V_b)  # (C_b, k) float64
    residual = V_b.double() - (alpha.unsqueeze(-1) * found.P.double()).sum(1)  # (C_b, D)
    maps = [
        class_maps(F[i, :n], found.E[i, :n], found.P[i], residual[i], patches_per_image)
        for i, n in enumerate(int(n) for n in counts)
    ]
    return FactorisedBatch(
        list(classes),
        found.P.cpu().double(),
        alpha.cpu(),
        residual.cpu(),
        found.objective.cpu().float(),
        maps,
    )


def refine_batch(batch: FactorisedBatch, refinement: RefinementSettings) -> HeadDecomposition:
    """Refinement of every class of a factorised batch (on the CPU, from its heatmaps): the
    residual's split and the refined prototypes."""
    k = batch.P.shape[1]
    beta, shift, even, refined = [], [], [], []
    for i, c in enumerate(batch.classes):
        b, m, j_even, j_refined = _refine_class(
            batch.maps[i], batch.P[i], batch.alpha[i], batch.residual[i], k, refinement
        )
        beta.append(b), shift.append(m), even.append(j_even), refined.append(j_refined)
        log.debug(
            "class %d: residual %.4g, J even %.4f -> %.4f",
            c,
            batch.residual[i].norm(),
            j_even,
            j_refined,
        )
    P, alpha, residual = batch.P, batch.alpha, batch.residual
    beta, shift = torch.stack(beta), torch.stack(shift)  # (C_b, k)
    prototypes = alpha.unsqueeze(-1) * P + residual_split(beta, shift, P, residual)  # (C_b, k, D)
    return HeadDecomposition(
        prototypes=prototypes.float(),
        bases=P.float(),
        alpha=alpha.float(),
        beta=beta.float(),
        shift=shift.float(),
        residual_norm=residual.norm(dim=1).float(),
        objective_even=torch.tensor(even),
        objective_refined=torch.tensor(refined),
        nmf_objective=batch.nmf_objective,
    )


def decompose_head(
    store: FeatureStore,
    V: torch.Tensor,
    k: int,
    nmf: NMFSettings = NMFSettings(),
    refinement: RefinementSettings = RefinementSettings(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    batches: Sequence[int] | None = None,
) -> HeadDecomposition:
    """Discover (NMF), fit (least squares) and refine (residual distribution) k prototypes per class
    of a feature store.

    Classes are processed in batches of `nmf.classes_per_batch` (NMF batched over them, seeded per
    batch); `batches` selects which batches to do (a DDP rank's share), None for all; the result
    holds the selected classes, in order. The streaming path (`prototypes.stream`) runs the same
    two steps on batches read straight from the images.
    """
    C, cpb = V.shape[0], nmf.classes_per_batch
    hw = store.map_size[0] * store.map_size[1]
    parts = []
    for first in range(0, C, cpb):
        if batches is not None and first // cpb not in batches:
            continue
        classes = list(range(first, min(C, first + cpb)))
        batch = ClassBatch.of_store(store, classes, device)
        factorised = factorise_batch(batch.F, batch.counts, V[classes], classes, k, hw, nmf, seed)
        parts.append(refine_batch(factorised, refinement))
    return HeadDecomposition.concatenate(parts)


def _refine_class(
    maps: ClassMaps,
    P: torch.Tensor,
    alpha: torch.Tensor,
    R: torch.Tensor,
    k: int,
    settings: RefinementSettings,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One class's (beta, s) (k,) float64 and its objective at the even split and at the result."""
    even, still = np.full(k, 1.0 / k), np.zeros(k)
    if settings.objective == "paper":
        paper = NormalisedHeatmaps(maps, P, R)
        beta, shift = refine_split(paper, k, settings)
        scores = paper(even, still), paper(beta, shift)
    else:
        cosine = HeatmapCosine(maps, alpha)
        beta, shift = refine_beta(cosine, k, settings), still
        scores = cosine(even), cosine(beta)
    return torch.from_numpy(beta), torch.from_numpy(shift), *scores
