"""DALLMi loss terms against naive float64 formulas, their stability, and their gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dallmi_core.method.losses import (
    bce_loss,
    dallmi_objective,
    mixup_log_target,
    mixup_term,
    variational_term,
)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def naive_variational(z_u: np.ndarray, z_p: np.ndarray, variant: str) -> np.ndarray:
    """[B, L], [L, k] -> [L] in float64, straight from DESIGN.md section 4."""
    phi_u, phi_p = np_sigmoid(z_u), np_sigmoid(z_p)
    if variant == "log":
        return np.log(phi_u.mean(axis=0)) - np.log(phi_p).mean(axis=1)
    return phi_u.mean(axis=0) - np.sqrt((phi_p**2).sum(axis=1))


def rand(*shape, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


@pytest.mark.parametrize("variant", ["log", "norm"])
def test_variational_matches_naive_float64(variant):
    z_u, z_p = rand(16, 5, seed=1), rand(5, 4, seed=2)
    got = variational_term(torch.tensor(z_u, dtype=torch.float32), torch.tensor(z_p, dtype=torch.float32), variant)
    assert got.shape == (5,)
    np.testing.assert_allclose(got.double().numpy(), naive_variational(z_u, z_p, variant), rtol=1e-5, atol=1e-5)


def test_variational_log_is_not_the_norm_variant():
    z_u, z_p = torch.tensor(rand(8, 3, seed=3)), torch.tensor(rand(3, 4, seed=4))
    assert not torch.allclose(variational_term(z_u, z_p, "log"), variational_term(z_u, z_p, "norm"))


def test_variational_known_values():
    # all logits 0: phi = 1/2 -> log: log(1/2) - log(1/2) = 0; norm: 1/2 - sqrt(k)/2
    z_u, z_p = torch.zeros(6, 2), torch.zeros(2, 4)
    assert torch.allclose(variational_term(z_u, z_p, "log"), torch.zeros(2))
    assert torch.allclose(variational_term(z_u, z_p, "norm"), torch.full((2,), 0.5 - 1.0))


def test_variational_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        variational_term(torch.zeros(2, 1), torch.zeros(1, 2), "l2")


@pytest.mark.parametrize("variant", ["log", "norm"])
def test_variational_is_finite_for_extreme_logits(variant):
    z_u = torch.tensor([[-80.0, 80.0], [-80.0, 80.0], [-80.0, -80.0]], requires_grad=True)
    z_p = torch.tensor([[-80.0, -80.0], [80.0, 80.0]], requires_grad=True)
    v = variational_term(z_u, z_p, variant)
    assert torch.isfinite(v).all()
    v.sum().backward()
    assert torch.isfinite(z_u.grad).all() and torch.isfinite(z_p.grad).all()
    if variant == "log":
        # label 0: log mean phi_u ~ -80, mean log phi_p ~ -80 -> V ~ 0; label 1 ~ log(2/3) - 0
        assert v[0].item() == pytest.approx(0.0, abs=1e-4)
        assert v[1].item() == pytest.approx(math.log(2 / 3), abs=1e-4)


def test_variational_log_positive_gradient_pushes_positives_up_and_unlabeled_down():
    z_u = torch.zeros(4, 1, requires_grad=True)
    z_p = torch.zeros(1, 3, requires_grad=True)
    variational_term(z_u, z_p, "log").sum().backward()
    assert (z_p.grad < 0).all()  # descending raises positive logits
    assert (z_u.grad > 0).all()  # and lowers unlabeled ones


def np_logsigmoid(z):
    return -np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))


def test_variational_log_is_exact_where_naive_float32_underflows():
    # sigmoid(-200) is 0 in float32: log(mean sigmoid) and log sigmoid must go through logsigmoid
    z_u = np.array([[-200.0, 3.0], [-150.0, -120.0], [-180.0, 0.0]])
    z_p = np.array([[-200.0, -100.0, 5.0], [-130.0, 0.0, 200.0]])
    got = variational_term(torch.tensor(z_u, dtype=torch.float32), torch.tensor(z_p, dtype=torch.float32), "log")
    log_mean_u = np.log(np.exp(np_logsigmoid(z_u) - np_logsigmoid(z_u).max(axis=0)).mean(axis=0)) + np_logsigmoid(
        z_u
    ).max(axis=0)
    expected = log_mean_u - np_logsigmoid(z_p).mean(axis=1)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5)


def test_mixup_log_target_is_exact_where_naive_float32_underflows():
    z = torch.tensor([[-200.0, -120.0]])
    mu = torch.tensor([[1.0, 1.0]])
    np.testing.assert_allclose(mixup_log_target(z, mu).double().numpy(), [[-200.0, -120.0]], rtol=1e-6)
    r = mixup_term(z, torch.tensor([[-190.0, -120.0]]), mu, "log")
    np.testing.assert_allclose(r.double().numpy(), [(100.0 + 0.0) / 2], rtol=1e-4)


# -- MixUp target --------------------------------------------------------------------------


def test_mixup_log_target_matches_formula():
    z = rand(4, 3, seed=5)
    mu = np.random.default_rng(6).uniform(0.01, 0.99, size=(4, 3))
    got = mixup_log_target(torch.tensor(z), torch.tensor(mu)).double().numpy()
    expected = np.log(mu * np_sigmoid(z) + (1 - mu))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_mixup_log_target_endpoints():
    z = torch.tensor([[-80.0, -3.0, 0.0, 2.5, 80.0]])
    at0 = mixup_log_target(z, torch.zeros_like(z))
    at1 = mixup_log_target(z, torch.ones_like(z))
    assert torch.allclose(at0, torch.zeros_like(z))  # all-positive mix: t = 1
    assert torch.allclose(at1, F.logsigmoid(z), atol=1e-6)  # all-unlabeled: t = phi(u)
    assert torch.isfinite(at0).all() and torch.isfinite(at1).all()


def test_mixup_log_target_weights_the_unlabeled_document_by_mu():
    # mu close to 1 means the input is mostly u, so the target is close to phi(u), not to 1
    z = torch.tensor([[-5.0]])
    assert mixup_log_target(z, torch.tensor([[0.95]])).item() < math.log(0.1)
    assert mixup_log_target(z, torch.tensor([[0.05]])).item() > math.log(0.9)


@pytest.mark.parametrize("variant", ["log", "norm"])
def test_mixup_term_matches_formula(variant):
    z_u, z_m = rand(3, 2, seed=7), rand(3, 2, seed=8)
    mu = np.random.default_rng(9).uniform(0.05, 0.95, size=(3, 2))
    got = mixup_term(torch.tensor(z_u), torch.tensor(z_m), torch.tensor(mu), variant).double().numpy()
    t = mu * np_sigmoid(z_u) + (1 - mu)
    if variant == "log":
        expected = ((np.log(t) - np.log(np_sigmoid(z_m))) ** 2).mean(axis=1)
    else:
        expected = ((t - np_sigmoid(z_m)) ** 2).mean(axis=1)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["log", "norm"])
def test_mixup_term_carries_gradient_to_mixed_and_target(variant):
    z_u = torch.tensor([[0.3, -1.2], [2.0, 0.1]], requires_grad=True)
    z_m = torch.tensor([[-0.7, 0.4], [-1.5, 1.0]], requires_grad=True)
    mu = torch.tensor([[0.4, 0.7], [0.2, 0.9]])
    r = mixup_term(z_u, z_m, mu, variant)
    g_u, g_m = torch.autograd.grad(r.sum(), (z_u, z_m))
    assert g_m.abs().min() > 0
    assert g_u.abs().min() > 0  # VPU does not detach the target


@pytest.mark.parametrize("variant", ["log", "norm"])
def test_mixup_term_detach_target_blocks_gradient_to_unlabeled_logit(variant):
    z_u = torch.tensor([[0.3, -1.2]], requires_grad=True)
    z_m = torch.tensor([[-0.7, 0.4]], requires_grad=True)
    mu = torch.tensor([[0.4, 0.7]])
    r = mixup_term(z_u, z_m, mu, variant, detach_target=True)
    g_u, g_m = torch.autograd.grad(r.sum(), (z_u, z_m), allow_unused=True)
    assert g_u is None or torch.count_nonzero(g_u) == 0
    assert g_m.abs().min() > 0
    # the value is the same with or without detaching
    assert torch.allclose(r, mixup_term(z_u, z_m, mu, variant, detach_target=False))


def test_mixup_term_finite_for_extreme_logits():
    z_u = torch.tensor([[-80.0, 80.0, -80.0]], requires_grad=True)
    z_m = torch.tensor([[80.0, -80.0, -80.0]], requires_grad=True)
    mu = torch.tensor([[0.0, 1.0, 0.5]])
    for variant in ("log", "norm"):
        r = mixup_term(z_u, z_m, mu, variant)
        assert torch.isfinite(r).all()
        g_u, g_m = torch.autograd.grad(r.sum(), (z_u, z_m))
        assert torch.isfinite(g_u).all() and torch.isfinite(g_m).all()


def test_mixup_term_unknown_variant():
    with pytest.raises(ValueError):
        mixup_term(torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), 0.5), "l1")


# -- the objective -------------------------------------------------------------------------


def test_objective_sums_v_plus_lambda_r_over_the_labels_given():
    v = torch.tensor([1.0, -2.0])
    r = torch.tensor([0.5, 0.25])
    loss, parts = dallmi_objective(v, r, lambda_mix=0.3)
    assert loss.item() == pytest.approx((1.0 - 2.0) + 0.3 * (0.5 + 0.25))
    assert parts["variational"] == pytest.approx(-1.0)
    assert parts["mixup"] == pytest.approx(0.75)
    assert parts["loss"] == pytest.approx(loss.item())


def test_objective_without_mixup():
    loss, parts = dallmi_objective(torch.tensor([1.0, 2.0]), None, lambda_mix=1.0)
    assert loss.item() == pytest.approx(3.0)
    assert parts["mixup"] == 0.0


def test_bce_loss_matches_naive():
    z, y = rand(5, 3, seed=10), (rand(5, 3, seed=11) > 0).astype(np.float64)
    p = np_sigmoid(z)
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert bce_loss(torch.tensor(z), torch.tensor(y)).item() == pytest.approx(expected, rel=1e-5)


# -- properties ----------------------------------------------------------------------------

logits = st.floats(-30, 30, allow_nan=False, width=32)


@st.composite
def shapes_and_logits(draw):
    b, labels, k = draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    z_u = draw(arrays(np.float64, (b, labels), elements=logits))
    z_p = draw(arrays(np.float64, (labels, k), elements=logits))
    return z_u, z_p


@settings(max_examples=80, deadline=None)
@given(shapes_and_logits(), st.sampled_from(["log", "norm"]))
def test_property_variational_matches_naive(data, variant):
    z_u, z_p = data
    got = variational_term(torch.tensor(z_u), torch.tensor(z_p), variant).double().numpy()
    assert got.shape == (z_u.shape[1],)
    np.testing.assert_allclose(got, naive_variational(z_u, z_p, variant), rtol=1e-4, atol=1e-4)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda labels: st.integers(1, 4).flatmap(
            lambda m: st.tuples(
                arrays(np.float64, (labels, m), elements=logits),
                arrays(np.float64, (labels, m), elements=logits),
                arrays(np.float64, (labels, m), elements=st.floats(0, 1)),
            )
        )
    ),
    st.sampled_from(["log", "norm"]),
)
def test_property_mixup_term_finite_bounded_and_matches(data, variant):
    z_u, z_m, mu = data
    r = mixup_term(torch.tensor(z_u), torch.tensor(z_m), torch.tensor(mu), variant)
    assert r.shape == (z_u.shape[0],)
    assert torch.isfinite(r).all() and (r >= 0).all()
    t = mu * np_sigmoid(z_u) + (1 - mu)
    if variant == "norm":
        expected = ((t - np_sigmoid(z_m)) ** 2).mean(axis=1)
        np.testing.assert_allclose(r.double().numpy(), expected, rtol=1e-4, atol=1e-5)
    else:
        # log t in float64 through logaddexp, with the endpoints mu = 0 and mu = 1 exact
        with np.errstate(divide="ignore"):
            log_t = np.logaddexp(np.log(mu) + np_logsigmoid(z_u), np.log1p(-mu))
        expected = ((log_t - np_logsigmoid(z_m)) ** 2).mean(axis=1)
        np.testing.assert_allclose(r.double().numpy(), expected, rtol=1e-3, atol=1e-3)
