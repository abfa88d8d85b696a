"""Head decomposition: exact reconstruction, least-squares alpha, refinement objective and constraint."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from proto_lightning.models import BlackBoxNet
from proto_lightning.models.posthoc import PostHocPrototypeNetwork
from proto_lightning.prototypes import decomposition
from proto_lightning.prototypes.decomposition import (
    OBJECTIVES,
    HeatmapCosine,
    NMFSettings,
    NormalisedHeatmaps,
    RefinementSettings,
    decompose_head,
    full_beta,
    least_squares_alpha,
    refine_beta,
    refine_split,
    residual_split,
)
from proto_lightning.prototypes.features import FeatureStore
from proto_lightning.prototypes.nmf import nmf


def random_store(
    C: int,
    D: int,
    images_per_class: int = 6,
    hw: int = 49,
    seed: int = 0,
    map_size: tuple[int, int] = (7, 7),
) -> FeatureStore:
    rng = np.random.default_rng(seed)
    assert map_size[0] * map_size[1] == hw
    n = C * images_per_class * hw
    features = np.maximum(rng.standard_normal((n, D)), 0).astype(np.float32) * rng.random(D).astype(
        np.float32
    )
    labels = np.repeat(np.arange(C), images_per_class * hw)
    return FeatureStore(
        features=features,
        rows=np.repeat(np.arange(C * images_per_class), hw),
        image_ids=np.repeat(np.arange(C * images_per_class) + 1, hw),
        locations=np.tile(
            np.stack(np.divmod(np.arange(hw), map_size[1]), 1), (C * images_per_class, 1)
        ),
        labels=labels,
        offsets=np.arange(C + 1) * images_per_class * hw,
        map_size=map_size,
    )


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_random_resnet18_head_is_reconstructed_exactly(objective):
    torch.manual_seed(0)
    net = BlackBoxNet("resnet18", num_classes=10).eval()
    V, b = net.head.weight.detach(), net.head.bias.detach()  # (10, 512)
    store = random_store(10, 512)
    k = 3  # k << D: least squares alone leaves a large residual
    settings = NMFSettings(max_iter=50, classes_per_batch=4)
    result = decompose_head(store, V, k, settings, RefinementSettings(objective=objective))
    assert (result.residual_norm / V.norm(dim=1) > 0.5).all()
    assert result.relative_head_error(V) < 1e-6
    assert torch.allclose(result.beta.sum(1), torch.ones(10), atol=1e-6)
    # logits: sum_i mean_j f_j . p~_i + b == v . mean_j f_j + b on random non-negative feature maps
    model = PostHocPrototypeNetwork(net, result.prototypes, b)
    fmap = torch.relu(torch.randn(8, 512, 7, 7)) * 3
    ours = model.contributions(fmap).sum(-1) + model.bias
    assert (ours - net.logits_from_features(fmap)).abs().max() < 1e-4
    assert torch.equal(ours.argmax(1), net.logits_from_features(fmap).argmax(1))


def test_alpha_is_the_least_squares_solution():
    rng = np.random.default_rng(0)
    P, V = rng.random((3, 4, 20)), rng.standard_normal((3, 20))
    alpha = least_squares_alpha(torch.from_numpy(P), torch.from_numpy(V)).numpy()
    for c in range(3):
        reference = np.linalg.lstsq(P[c].T, V[c], rcond=None)[0]
        assert np.allclose(alpha[c], reference)


def test_heatmap_cosine_objective_by_hand():
    torch.manual_seed(3)
    Fm, E, P = torch.rand(50, 12).double(), torch.rand(50, 3).double(), torch.rand(3, 12).double()
    alpha, r = torch.tensor([0.5, -1.0, 2.0]).double(), torch.randn(12).double()
    beta = np.array([0.2, 0.5, 0.3])
    prototypes = alpha[:, None] * P + torch.from_numpy(beta)[:, None] * r  # (3, 12)
    heatmaps = Fm @ prototypes.T  # (50, 3)
    by_hand = (1 - F.cosine_similarity(heatmaps, E, dim=0)).mean()
    assert np.isclose(HeatmapCosine.of_features(Fm, E, P, alpha, r)(beta), float(by_hand))


def test_refinement_keeps_the_sum_and_never_loses_to_the_even_split():
    store = random_store(4, 64, seed=1)
    V = torch.randn(4, 64)
    nmf = NMFSettings(max_iter=30)
    even = decompose_head(store, V, 4, nmf, RefinementSettings(objective="even"))
    refined = decompose_head(store, V, 4, nmf, RefinementSettings(objective="heatmap_cosine"))
    assert torch.allclose(even.beta, torch.full((4, 4), 0.25))
    assert torch.allclose(refined.beta.sum(1), torch.ones(4), atol=1e-6)
    assert (refined.objective_refined <= refined.objective_even + 1e-12).all()
    assert (refined.objective_refined < refined.objective_even).any()  # it does optimise
    assert torch.allclose(refined.objective_even, even.objective_refined)
    assert (refined.beta >= 0).all()  # simplex: every prototype takes a share of the residual


def test_sum_to_one_constraint_stays_within_its_bound():
    store = random_store(4, 64, seed=1)
    V = torch.randn(4, 64)
    refinement = RefinementSettings(constraint="sum_to_one", beta_bound=2.0)
    result = decompose_head(store, V, 4, NMFSettings(max_iter=30), refinement)
    assert torch.allclose(result.beta.sum(1), torch.ones(4), atol=1e-6)
    assert (result.beta[:, :-1].abs() <= 2.0 + 1e-9).all()
    assert (result.objective_refined <= result.objective_even + 1e-12).all()
    assert result.relative_head_error(V) < 1e-6


def test_single_prototype_takes_the_whole_residual():
    objective = HeatmapCosine.of_features(
        torch.rand(10, 5), torch.rand(10, 1), torch.rand(1, 5), torch.ones(1), torch.rand(5)
    )
    assert refine_beta(objective, 1, RefinementSettings()).tolist() == [1.0]


def test_free_variables_map_to_the_constrained_beta():
    """simplex: beta = softmax(z_1..z_{k-1}, 0), so z = 0 is the even split; sum_to_one: the last
    beta is 1 minus the others."""
    assert np.allclose(full_beta(np.zeros(2), "simplex"), [1 / 3, 1 / 3, 1 / 3])
    assert np.allclose(full_beta(np.array([np.log(2.0), 0.0]), "simplex"), [0.5, 0.25, 0.25])
    assert np.allclose(full_beta(np.array([0.2, 0.3]), "sum_to_one"), [0.2, 0.3, 0.5])


@pytest.fixture
def minimize_spy(monkeypatch) -> dict:
    """scipy's minimize as decomposition calls it, recording its start `x0` and `bounds`."""
    seen = {}

    def spy(fun, x0, **kwargs):
        seen.update(x0=x0, bounds=kwargs["bounds"])
        return minimize(fun, x0, **kwargs)

    monkeypatch.setattr(decomposition, "minimize", spy)
    return seen


@pytest.mark.parametrize("constraint", ["simplex", "sum_to_one"])
def test_nelder_mead_starts_at_the_even_split_within_the_bounds(constraint, minimize_spy):
    """The search starts from beta = 1/k and, under `sum_to_one`, keeps |b_i| <= beta_bound."""
    seen = minimize_spy
    torch.manual_seed(0)
    objective = HeatmapCosine.of_features(
        torch.rand(30, 6), torch.rand(30, 3), torch.rand(3, 6), torch.rand(3), torch.randn(6)
    )
    refine_beta(objective, 3, RefinementSettings(constraint=constraint, beta_bound=0.7))
    assert np.allclose(full_beta(seen["x0"], constraint), [1 / 3] * 3)
    assert seen["bounds"] == (None if constraint == "simplex" else [(-0.7, 0.7)] * 2)


def test_a_ranks_share_of_batches_equals_those_classes_of_the_whole_head():
    """Classes of unequal sizes (zero-padded in their NMF batch), 2 per batch, each batch seeded
    with seed + its first class: batch 1 alone gives classes 2 and 3 of the whole decomposition,
    whose bases are NMF's on that batch with seed 7 + 2."""
    store = random_store(5, 12, images_per_class=2, hw=9, seed=4, map_size=(3, 3))
    keep = np.r_[0:18, 18:27, 36:54, 54:63, 72:90]  # class 1 and 3 lose an image
    sizes = np.bincount(store.labels[keep], minlength=5)
    store = FeatureStore(
        store.features[keep],
        store.rows[keep],
        store.image_ids[keep],
        store.locations[keep],
        store.labels[keep],
        np.concatenate([[0], np.cumsum(sizes)]),
        (3, 3),
    )
    V = torch.randn(5, 12)
    settings = NMFSettings(max_iter=20, classes_per_batch=2)
    whole = decompose_head(store, V, 3, settings, RefinementSettings(objective="even"), seed=7)
    share = decompose_head(
        store, V, 3, settings, RefinementSettings(objective="even"), seed=7, batches=[1]
    )
    assert share.prototypes.shape[0] == 2
    assert torch.equal(share.prototypes, whole.prototypes[2:4])
    assert whole.relative_head_error(V) < 1e-6
    F = torch.zeros(2, 18, 12)
    F[0, :18], F[1, :9] = (torch.from_numpy(store.class_slice(c)) for c in (2, 3))
    assert torch.allclose(share.bases, nmf(F, 3, max_iter=20, tol=1e-4, seed=9).P)


def test_library_settings_are_the_configured_defaults():
    """A decomposition called from Python gets what conf/model/posthoc.yaml sets for a run."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from proto_lightning.config import compose_config

    model = compose_config("decompose", ["data.root=unused", "blackbox_ckpt=x.ckpt"]).model
    assert OmegaConf.to_container(model.nmf) == asdict(NMFSettings())
    assert OmegaConf.to_container(model.refinement) == asdict(RefinementSettings())


def paper_objective_by_hand(F, hw, P, r):
    """mean over images and i of ||Norm(F_img p_i) - Norm(F_img r_i)||^2, one image at a time."""

    def norm(h):
        return h / h.norm() if h.norm() > 0 else h

    terms = [
        float((norm(image @ p) - norm(image @ ri)).pow(2).sum())
        for image in F.double().split(hw)
        for p, ri in zip(P.double(), r.double(), strict=True)
    ]
    return sum(terms) / len(terms)


def test_residual_split_by_hand():
    """r_i = beta_i (R - sum_j m_j) + m_i with m_j = s_j ||R|| p_j / ||p_j||, worked out on paper."""
    P = torch.tensor([[3.0, 0, 0], [0, 0, 0.5], [0, 0, 0]]).double()  # the third base is dead
    R = torch.tensor([0.0, 3, 4]).double()  # ||R|| = 5: m = (1, 0, 0), (0, 0, -2), 0
    beta, shift = torch.tensor([0.25, 0.5, 0.25]).double(), torch.tensor([0.2, -0.4, 0.9]).double()
    r = residual_split(beta, shift, P, R)
    # R - sum m = (-1, 3, 6)
    expected = [[0.75, 0.75, 1.5], [-0.5, 1.5, 1.0], [-0.25, 0.75, 1.5]]
    assert torch.allclose(r, torch.tensor(expected).double())
    assert torch.allclose(r.sum(0), R)
    plain = residual_split(beta, torch.zeros(3).double(), P, R)
    assert torch.equal(plain, beta[:, None] * R)  # s = 0: the plain split, bit for bit


def test_paper_objective_by_hand():
    """Per-image L2 normalisation over the H W patches; an all-zero image's heatmaps count as zero."""
    torch.manual_seed(5)
    hw, D = 4, 6
    F = torch.rand(3 * hw, D)
    F[hw : 2 * hw] = 0  # the second image has no activation at all
    P, R = torch.rand(3, D), torch.randn(D)
    beta, shift = np.array([0.5, 0.2, 0.3]), np.array([0.3, -0.6, 0.1])
    r = residual_split(torch.from_numpy(beta), torch.from_numpy(shift), P.double(), R.double())
    value = NormalisedHeatmaps.of_features(F, hw, P, R)(beta, shift)
    assert np.isclose(value, paper_objective_by_hand(F, hw, P, r))
    # the zero image contributes ||0 - 0||^2 = 0 to each of its k terms
    assert np.isclose(
        value * 9, paper_objective_by_hand(F[[*range(4), *range(8, 12)]], hw, P, r) * 6
    )


def test_paper_objective_is_blind_to_beta_without_the_shift():
    """Under r_i = beta_i R alone, Norm(F beta_i R) = sign(beta_i) Norm(F R): J is the same at every
    point of the simplex, so Nelder-Mead over beta alone could not move; only a sign changes it."""
    torch.manual_seed(6)
    objective = NormalisedHeatmaps.of_features(
        torch.rand(5 * 9, 8), 9, torch.rand(3, 8), torch.randn(8)
    )
    still = np.zeros(3)
    even = objective(np.full(3, 1 / 3), still)
    for beta in np.random.default_rng(0).dirichlet(np.ones(3), size=5):
        assert np.isclose(objective(beta, still), even, rtol=0, atol=1e-12)
    assert not np.isclose(objective(np.array([1.5, -0.2, -0.3]), still), even)
    assert not np.isclose(objective(np.full(3, 1 / 3), np.array([0.5, 0.0, 0.0])), even)


def test_paper_refinement_is_exact_bounded_and_reports_its_objective():
    """On 4 x 6 maps: Norm runs over each image's 24 patches (not 36 or 16)."""
    store = random_store(4, 64, hw=24, seed=2, map_size=(4, 6))
    V = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    settings = RefinementSettings(objective="paper", shift_bound=0.5)
    result = decompose_head(store, V, 3, NMFSettings(max_iter=30), settings)
    assert result.relative_head_error(V) < 1e-6
    assert (result.beta >= 0).all() and torch.allclose(result.beta.sum(1), torch.ones(4))
    assert (result.shift.abs() <= 0.5 + 1e-9).all() and (result.shift != 0).any()
    assert (result.objective_refined < result.objective_even).all()
    hw = 24
    for c in range(4):
        F = torch.from_numpy(store.class_slice(c))
        P, alpha = result.bases[c].double(), result.alpha[c, :, None].double()
        R = V[c].double() - (alpha * P).sum(0)
        # r from the stored (beta, s); a share beta_i near 0 leaves r_i too small to recover from p~
        r = residual_split(result.beta[c].double(), result.shift[c].double(), P, R)
        assert torch.allclose(alpha * P + r, result.prototypes[c].double(), atol=1e-5)
        reference = paper_objective_by_hand(F, hw, P, r)
        assert np.isclose(float(result.objective_refined[c]), reference, atol=1e-5)
        even = paper_objective_by_hand(F, hw, P, R.expand(3, -1) / 3)
        assert np.isclose(float(result.objective_even[c]), even, atol=1e-6)


@pytest.mark.parametrize("constraint", ["simplex", "sum_to_one"])
def test_paper_search_starts_at_the_even_split_within_the_bounds(constraint, minimize_spy):
    """2k - 1 free variables: beta's k - 1 (as for heatmap_cosine), then s_1..s_k from 0 within +-shift_bound."""
    seen = minimize_spy
    torch.manual_seed(0)
    objective = NormalisedHeatmaps.of_features(
        torch.rand(4 * 9, 6), 9, torch.rand(3, 6), torch.randn(6)
    )
    settings = RefinementSettings(
        objective="paper", constraint=constraint, beta_bound=0.7, shift_bound=0.4
    )
    beta, shift = refine_split(objective, 3, settings)
    assert np.isclose(beta.sum(), 1) and (np.abs(shift) <= 0.4).all()
    assert np.allclose(full_beta(seen["x0"][:2], constraint), [1 / 3] * 3)
    assert np.array_equal(seen["x0"][2:], np.zeros(3))
    beta_bounds = (None, None) if constraint == "simplex" else (-0.7, 0.7)
    assert seen["bounds"] == [beta_bounds] * 2 + [(-0.4, 0.4)] * 3
    assert np.isclose(beta.sum(), 1) and (np.abs(shift) <= 0.4).all()


def test_paper_split_of_one_prototype_is_the_residual_and_of_two_is_searched():
    """k = 1: r_1 = R whatever the search, so nothing is searched (beta 1, s 0); k = 2 is searched
    and beats the even split on random data."""
    torch.manual_seed(1)
    settings = RefinementSettings(objective="paper")
    one = NormalisedHeatmaps.of_features(torch.rand(4 * 9, 6), 9, torch.rand(1, 6), torch.randn(6))
    beta, shift = refine_split(one, 1, settings)
    assert beta.tolist() == [1.0] and shift.tolist() == [0.0]
    two = NormalisedHeatmaps.of_features(torch.rand(4 * 9, 6), 9, torch.rand(2, 6), torch.randn(6))
    beta, shift = refine_split(two, 2, settings)
    assert two(beta, shift) < two(np.full(2, 0.5), np.zeros(2))
