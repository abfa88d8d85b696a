"""Batched HALS NMF: objective against scikit-learn with the same init, determinism, padding invariance;
semi-NMF (signed features) against a planted factorisation and numpy's least squares."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from proto_lightning.prototypes.nmf import factorise, nmf, objective, random_init, semi_nmf


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


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_early_iterations_follow_sklearn_coordinate_descent_exactly(iterations):
    """HALS updates P (all k rows), then E; scikit-learn's cd solver updates W, then H. Fitting
    F^T = P^T E^T with W = P^T, H = E^T gives the same order, so from one init the two trajectories
    coincide iteration by iteration (a wrong step size or order parts them after one sweep)."""
    torch.manual_seed(3)
    F = torch.relu(torch.randn(1, 60, 12)).double()
    E0, P0 = random_init(F, 3, seed=1)
    ours = nmf(F, 3, max_iter=iterations, tol=0.0, init=(E0, P0))
    reference = NMF(3, init="custom", solver="cd", max_iter=iterations, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: intended
        Pt = reference.fit_transform(
            F[0].T.numpy(), W=P0[0].T.numpy().copy(), H=E0[0].T.numpy().copy()
        )
    assert np.allclose(ours.P[0].numpy(), Pt.T, rtol=1e-8, atol=1e-10)
    assert np.allclose(ours.E[0].numpy(), reference.components_.T, rtol=1e-8, atol=1e-10)
    assert ours.iterations == iterations


def test_random_init_has_sklearns_scale():
    """init="random": |N(0, 1)| sqrt(mean(F) / k), whose mean is sqrt(2 / pi) sqrt(mean(F) / k);
    zero-padded rows of F get zero rows of E."""
    F = torch.cat(
        [torch.full((1, 2000, 1000), 2.0), torch.zeros(1, 500, 1000)], 1
    )  # mean over real rows 2
    E, P = random_init(F, 4, seed=0)  # 8000 and 4000 draws: the means within 1 % and 1.5 % (1 sd)
    expected = math.sqrt(2 / math.pi) * math.sqrt(2.0 / 4)
    assert E[0, :2000].mean().item() == pytest.approx(expected, rel=0.04)
    assert P.mean().item() == pytest.approx(expected, rel=0.05)
    assert (E[0, 2000:] == 0).all() and (E >= 0).all() and (P >= 0).all()


def test_stops_when_the_relative_decrease_falls_below_tol():
    """With tol = 1 the first sweep's relative decrease (below 1 for any non-negative objective) stops it."""
    F = torch.relu(torch.randn(2, 40, 6, generator=torch.Generator().manual_seed(0)))
    assert nmf(F, 2, tol=1.0).iterations == 1
    result = nmf(F, 2, tol=1e-3, max_iter=500)
    assert 1 < result.iterations < 500
    before = nmf(F, 2, tol=0.0, max_iter=result.iterations - 1).objective
    after = nmf(F, 2, tol=0.0, max_iter=result.iterations).objective
    assert ((before - after) / before).max() < 1e-3  # it stopped at the first small step ...
    earlier = nmf(F, 2, tol=0.0, max_iter=result.iterations - 2).objective
    assert ((earlier - before) / earlier).max() >= 1e-3  # ... and not before it


def test_init_scale_uses_each_problems_real_rows_however_small():
    """A class whose one real row is small (values 1e-4, summing to 0.4; padding after it) still gets a
    non-zero E row, and its scale is sqrt(mean over that row / k)."""
    F = torch.zeros(1, 5, 4000)
    F[0, 0] = 1e-4
    E, P = random_init(F, 4, seed=1)
    assert (E[0, 0] > 0).all() and (E[0, 1:] == 0).all()
    expected = math.sqrt(2 / math.pi) * math.sqrt(1e-4 / 4)
    assert P.mean().item() == pytest.approx(expected, rel=0.03)  # 16000 draws


def test_a_single_matrix_is_one_problem_and_zero_iterations_return_the_start():
    F = torch.relu(torch.randn(30, 8, generator=torch.Generator().manual_seed(5))).double()
    single, batched = (
        nmf(F, 2, max_iter=5, tol=0.0, seed=1),
        nmf(F[None], 2, max_iter=5, tol=0.0, seed=1),
    )
    assert single.P.shape == (1, 2, 8) and torch.equal(single.P, batched.P)
    E0, P0 = random_init(F[None], 2, seed=1)
    start = nmf(F, 2, max_iter=0, seed=1)
    assert start.iterations == 0 and torch.equal(start.P, P0) and torch.equal(start.E, E0)
    assert torch.allclose(start.objective, 0.5 * ((F - E0[0] @ P0[0]) ** 2).sum()[None])


def planted(seed: int = 0, C: int = 2, N: int = 90, k: int = 3, D: int = 12):
    """F = E0 P0 with E0 >= 0 and P0 signed: features as after a LayerNorm, exactly of rank k."""
    g = torch.Generator().manual_seed(seed)
    E0 = torch.rand(C, N, k, generator=g, dtype=torch.float64)
    P0 = torch.randn(C, k, D, generator=g, dtype=torch.float64)
    return E0 @ P0


def test_semi_nmf_recovers_a_planted_signed_factorisation():
    F = planted()
    assert (F < 0).any()
    found = semi_nmf(F, 3, max_iter=3000, tol=1e-12)
    relative = found.objective / (0.5 * (F * F).sum((1, 2)))
    assert (relative < 1e-4).all()
    assert (found.E >= 0).all() and (found.P < 0).any()
    assert torch.allclose(found.objective, objective(F, found.E, found.P))


def test_semi_nmf_bases_are_numpys_least_squares_given_the_part_maps():
    F = planted(1) + 0.1 * torch.randn(2, 90, 12, dtype=torch.float64)
    found = semi_nmf(F, 3, max_iter=40, tol=0.0)
    for c in range(2):
        reference = np.linalg.lstsq(found.E[c].numpy(), F[c].numpy(), rcond=None)[0]
        assert np.allclose(found.P[c].numpy(), reference, atol=1e-8)


def test_semi_nmf_objective_never_increases():
    F = planted(2) + 0.3 * torch.randn(2, 90, 12, dtype=torch.float64)
    trajectory = torch.stack([semi_nmf(F, 4, max_iter=i, tol=0.0).objective for i in range(1, 25)])
    assert (trajectory[1:] <= trajectory[:-1] * (1 + 1e-12)).all()
    assert (trajectory[-1] < 0.5 * trajectory[0]).all()


def test_semi_nmf_zero_padding_changes_nothing():
    F = planted(3, C=1, N=18)
    E0 = random_init(F, 3, seed=5)[0]
    padded = torch.cat([F, torch.zeros(1, 12, 12, dtype=F.dtype)], dim=1)
    E0p = torch.cat([E0, torch.zeros(1, 12, 3, dtype=F.dtype)], dim=1)
    a = semi_nmf(F, 3, max_iter=30, tol=0.0, init=E0)
    b = semi_nmf(padded, 3, max_iter=30, tol=0.0, init=E0p)
    assert (b.E[0, 18:] == 0).all()
    assert torch.allclose(a.P, b.P, atol=1e-10) and torch.allclose(a.objective, b.objective)


def test_factorise_chooses_semi_nmf_exactly_when_a_feature_is_negative():
    signed = planted(4)
    non_negative = signed.abs()
    assert torch.equal(factorise(signed, 3, max_iter=10).P, semi_nmf(signed, 3, max_iter=10).P)
    assert torch.equal(
        factorise(non_negative, 3, max_iter=10).P, nmf(non_negative, 3, max_iter=10).P
    )
    assert torch.equal(
        factorise(non_negative, 3, "seminmf", max_iter=10).P,
        semi_nmf(non_negative, 3, max_iter=10).P,
    )
    with pytest.raises(ValueError, match="negative values"):
        factorise(signed, 3, "nmf")
    with pytest.raises(ValueError, match="model.nmf.method=.pca. is not one of auto, nmf, seminmf"):
        factorise(signed, 3, "pca")
