"""Batched (semi-)non-negative matrix factorisation F ~ E P (Frobenius loss) in torch, one problem per class.

docs/method.md, "Discovery": for each class c, min_{E>=0, P>=0} ||F_c - E P||_F^2 with F_c (n_c HW, D), E (n_c HW, k),
P (k, D). Solver: hierarchical alternating least squares (HALS; Cichocki & Phan 2009, "Fast local
algorithms for large scale nonnegative matrix and tensor factorizations"), the same
coordinate-wise update scikit-learn's `NMF(solver="cd")` uses. All classes are solved together as
one batch (zero-padded to the largest class: a zero row of F keeps its row of E at zero, so padding
changes nothing), which is what makes it fast on a GPU. Initialisation follows scikit-learn's
`init="random"`: |N(0, 1)| * sqrt(mean(F) / k), seeded.

Signed features (after LayerNorm, GELU or SiLU; docs/method.md, "Discovery") get semi-NMF (Ding, Li & Jordan 2010,
"Convex and semi-nonnegative matrix factorizations", TPAMI): min ||F - E P||^2 with only E >= 0 (the
part maps) and P signed (the bases). Their alternating scheme is kept: P is the exact least-squares
solution given E, P = (E^T E)^+ E^T F; E's update is the HALS step above (an exact minimisation over
one column of E at a time, projected on E >= 0) instead of their multiplicative rule. Both steps
never increase the objective. `factorise` picks semi-NMF when F holds a negative value
(`method="auto"`), or as configured (`model.nmf.method`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proto_lightning.errors import ConfigValueError
from proto_lightning.settings import require_choice

EPS = 1e-12


@dataclass
class NMFResult:
    """Factors and the final objective 0.5 ||F - E P||_F^2 per problem."""

    E: torch.Tensor  # (C, N, k)
    P: torch.Tensor  # (C, k, D)
    objective: torch.Tensor  # (C,)
    iterations: int


METHODS = ("auto", "nmf", "seminmf")


def random_init(F: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn-style random initialisation for a batch F (C, N, D); padded rows get E = 0.

    The scale is sqrt(mean |F| / k) (scikit-learn's mean(F) / k for a non-negative F)."""
    C, N, D = F.shape
    generator = torch.Generator().manual_seed(seed)
    # reductions, never an |F| copy: a class batch may fill most of the device
    l1 = torch.linalg.vector_norm(F, ord=1, dim=-1, keepdim=True)  # (C, N, 1)
    rows = (l1 > 0).to(F.dtype)  # (C, N, 1), 0 on padding
    counts = rows.sum(1).clamp_min(1) * D  # (C, 1)
    scale = torch.sqrt(l1.sum((1, 2)) / counts.squeeze(-1) / k).view(C, 1, 1)  # (C, 1, 1)
    E = torch.randn(C, N, k, generator=generator).abs().to(F) * scale * rows
    P = torch.randn(C, k, D, generator=generator).abs().to(F) * scale
    return E, P


def objective(F: torch.Tensor, E: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """0.5 ||F - E P||_F^2 per batch element, computed without forming E P: (C,)."""
    FtF = torch.linalg.vector_norm(F, dim=(1, 2)) ** 2  # no F * F copy
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


def _update_E(F: torch.Tensor, E: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """One HALS pass over E's k columns given P: gram P P^T, target F P^T."""
    Pt = P.transpose(1, 2)  # (C, D, k)
    return _hals_sweep(E.transpose(1, 2).contiguous(), P @ Pt, (F @ Pt).transpose(1, 2)).transpose(
        1, 2
    )


def _relative_change_below(previous: torch.Tensor, current: torch.Tensor, tol: float) -> bool:
    """Whether every problem's objective changed by less than `tol`, relative."""
    return bool(((previous - current).abs() / previous.clamp_min(EPS)).max() < tol)


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
    if F.numel() and F.min() < 0:
        raise ValueError("NMF needs a non-negative matrix; are the features taken after a ReLU?")
    E, P = (t.clone() for t in init) if init is not None else random_init(F, k, seed)
    previous = objective(F, E, P)
    iterations = 0
    for iteration in range(1, max_iter + 1):
        iterations = iteration
        Et = E.transpose(1, 2)  # (C, k, N)
        P = _hals_sweep(P, Et @ E, Et @ F)  # update P rows: gram E^T E, target E^T F
        E = _update_E(F, E, P)
        current = objective(F, E, P)
        if _relative_change_below(previous, current, tol):
            break
        previous = current
    return NMFResult(E.contiguous(), P, objective(F, E, P), iterations)


def least_squares_bases(F: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """P (C, k, D) = argmin_P ||F - E P||^2 = (E^T E)^+ E^T F, the minimum-norm solution
    (a column of E that died keeps its row of P at zero)."""
    Et = E.transpose(1, 2)  # (C, k, N)
    return torch.linalg.pinv(Et @ E) @ (Et @ F)


def semi_nmf(
    F: torch.Tensor,
    k: int,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> NMFResult:
    """Factorise every signed F[c] (N, D) into E[c] (N, k) >= 0 and signed P[c] (k, D) (Ding, Li &
    Jordan 2010): P by least squares, E by HALS from `init` (or seeded random); stop at relative
    change < tol."""
    if F.dim() == 2:
        F = F.unsqueeze(0)
    E = init.clone() if init is not None else random_init(F, k, seed)[0]
    P = least_squares_bases(F, E)
    previous = objective(F, E, P)
    iterations = 0
    for iteration in range(1, max_iter + 1):
        iterations = iteration
        E = _update_E(F, E, P)
        P = least_squares_bases(F, E)
        current = objective(F, E, P)
        if _relative_change_below(previous, current, tol):
            break
        previous = current
    return NMFResult(E.contiguous(), P, objective(F, E, P), iterations)


def factorise(
    F: torch.Tensor,
    k: int,
    method: str = "auto",
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
) -> NMFResult:
    """NMF, or semi-NMF for signed features: `method` auto (semi-NMF when F has a negative value),
    nmf or seminmf."""
    require_choice(method, METHODS, "model.nmf.method")
    signed = bool(F.numel() and F.min() < 0)
    if method == "nmf" and signed:
        raise ConfigValueError(
            "model.nmf.method=nmf needs non-negative features, but this black box's have negative "
            "values (e.g. after a LayerNorm, GELU or SiLU): use method=auto or seminmf"
        )
    if method == "seminmf" or (method == "auto" and signed):
        return semi_nmf(F, k, max_iter=max_iter, tol=tol, seed=seed)
    return nmf(F, k, max_iter=max_iter, tol=tol, seed=seed)
