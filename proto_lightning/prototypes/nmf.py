"""Batched non-negative matrix factorisation F ~ E P (Frobenius loss) in torch, one problem per class.

DESIGN.md 2.1: for each class c, min_{E>=0, P>=0} ||F_c - E P||_F^2 with F_c (n_c HW, D), E (n_c HW, k),
P (k, D). Solver: hierarchical alternating least squares (HALS; Cichocki & Phan 2009, "Fast local
algorithms for large scale nonnegative matrix and tensor factorizations"), the same
coordinate-wise update scikit-learn's `NMF(solver="cd")` uses. All classes are solved together as
one batch (zero-padded to the largest class: a zero row of F keeps its row of E at zero, so padding
changes nothing), which is what makes it fast on a GPU. Initialisation follows scikit-learn's
`init="random"`: |N(0, 1)| * sqrt(mean(F) / k), seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12


@dataclass
class NMFResult:
    """Factors and the final objective 0.5 ||F - E P||_F^2 per problem."""

    E: torch.Tensor  # (C, N, k)
    P: torch.Tensor  # (C, k, D)
    objective: torch.Tensor  # (C,)
    iterations: int


def random_init(F: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn-style random initialisation for a batch F (C, N, D); padded rows get E = 0."""
    C, N, D = F.shape
    generator = torch.Generator().manual_seed(seed)
    rows = (F.abs().sum(-1, keepdim=True) > 0).to(F.dtype)  # (C, N, 1), 0 on padding
    counts = rows.sum(1).clamp_min(1) * D  # (C, 1)
    scale = torch.sqrt(F.sum((1, 2)) / counts.squeeze(-1) / k).view(C, 1, 1)  # (C, 1, 1)
    E = torch.randn(C, N, k, generator=generator).abs().to(F) * scale * rows
    P = torch.randn(C, k, D, generator=generator).abs().to(F) * scale
    return E, P


def objective(F: torch.Tensor, E: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """0.5 ||F - E P||_F^2 per batch element, computed without forming E P: (C,)."""
    FtF = (F * F).sum((1, 2))
    cross = ((E.transpose(1, 2) @ F) * P).sum((1, 2))  # trace(P^T E^T F)
    quad = ((E.transpose(1, 2) @ E) * (P @ P.transpose(1, 2))).sum((1, 2))  # trace(E^T E P P^T)
    return 0.5 * (FtF - 2 * cross + quad)


def _hals_sweep(X: torch.Tensor, gram: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One HALS pass over the k rows of X (C, k, M): x_j <- max(0, x_j + (t_j - G_j X) / G_jj).

    Sequential over the k components by construction of HALS (k is small, 3 to 10).
    """
    for j in range(X.shape[1]):
        numerator = target[:, j] - (gram[:, j : j + 1] @ X).squeeze(1)  # (C, M)
        X[:, j] = (X[:, j] + numerator / gram[:, j, j, None].clamp_min(EPS)).clamp_min(0)
    return X


def nmf(
    F: torch.Tensor,
    k: int,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> NMFResult:
    """Factorise every F[c] (N, D) >= 0 into E[c] (N, k) P[c] (k, D) by HALS; stop at relative change < tol."""
    if F.dim() == 2:
        F = F.unsqueeze(0)
    if (F < 0).any():
        raise ValueError("NMF needs a non-negative matrix; are the features taken after a ReLU?")
    E, P = (t.clone() for t in init) if init is not None else random_init(F, k, seed)
    previous = objective(F, E, P)
    iterations = 0
    for iteration in range(1, max_iter + 1):
        iterations = iteration
        Et = E.transpose(1, 2)  # (C, k, N)
        P = _hals_sweep(P, Et @ E, Et @ F)  # update P rows: gram E^T E, target E^T F
        Pt = P.transpose(1, 2)  # (C, D, k)
        E = _hals_sweep(E.transpose(1, 2).contiguous(), P @ Pt, (F @ Pt).transpose(1, 2)).transpose(
            1, 2
        )
        current = objective(F, E, P)
        if ((previous - current).abs() / previous.clamp_min(EPS)).max() < tol:
            break
        previous = current
    return NMFResult(E.contiguous(), P, objective(F, E, P), iterations)
