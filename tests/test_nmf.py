"""Batched HALS NMF: objective against scikit-learn with the same init, determinism, padding invariance."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF

from proto_lightning.prototypes.nmf import nmf, objective, random_init


def test_objective_within_one_percent_of_sklearn_with_the_same_init():
    torch.manual_seed(0)
    F = torch.relu(torch.randn(2, 300, 40)).double()  # two classes' patch features
    E0, P0 = random_init(F, 4, seed=0)
    ours = nmf(F, 4, max_iter=150, tol=0.0, init=(E0, P0)).objective
    for c in range(2):
        reference = NMF(4, init="custom", solver="cd", max_iter=150, tol=0.0, random_state=0)
        W = reference.fit_transform(F[c].numpy(), W=E0[c].numpy().copy(), H=P0[c].numpy().copy())
        sklearn_objective = 0.5 * np.linalg.norm(F[c].numpy() - W @ reference.components_) ** 2
        assert float(ours[c]) <= 1.01 * sklearn_objective


def test_objective_formula_matches_the_residual_norm():
    torch.manual_seed(1)
    F, E, P = (
        torch.rand(1, 20, 6).double(),
        torch.rand(1, 20, 3).double(),
        torch.rand(1, 3, 6).double(),
    )
    assert torch.allclose(objective(F, E, P), 0.5 * ((F - E @ P) ** 2).sum((1, 2)))


def test_seeded_deterministic_and_non_negative():
    F = torch.relu(torch.randn(3, 50, 10))
    a, b = nmf(F, 3, seed=5), nmf(F, 3, seed=5)
    assert torch.equal(a.P, b.P) and torch.equal(a.E, b.E)
    assert (a.P >= 0).all() and (a.E >= 0).all()


def test_zero_padding_changes_nothing():
    torch.manual_seed(2)
    F = torch.relu(torch.randn(1, 30, 8)).double()
    E0, P0 = random_init(F, 3, seed=0)
    padded = torch.cat([F, torch.zeros(1, 10, 8, dtype=F.dtype)], 1)
    E0p = torch.cat([E0, torch.zeros(1, 10, 3, dtype=F.dtype)], 1)
    plain = nmf(F, 3, max_iter=50, tol=0.0, init=(E0, P0))
    pad = nmf(padded, 3, max_iter=50, tol=0.0, init=(E0p, P0))
    assert torch.allclose(plain.P, pad.P) and (pad.E[:, 30:] == 0).all()


def test_negative_features_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-torch.ones(1, 4, 4), 2)
