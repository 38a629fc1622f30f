"""Privacy accounting from recorded events."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from privacy import accounting, rdp_memo
from privacy.accounting import (
    DPEvent,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
    format_epsilon,
    merge_events,
)
from privacy.reference_accounting import pld_epsilon


@pytest.mark.parametrize(
    "events",
    [
        [DPEvent(0.8, 0.01, 300)],
        [DPEvent(1.1, 0.05, 40), DPEvent(0.9, 0.02, 100)],
        [DPEvent(2.0, 0.2, 10)] * 5,
    ],
)
def test_prv_agrees_with_pld_and_is_below_rdp(events) -> None:  # type: ignore[no-untyped-def]
    prv = compute_epsilon(events, 1e-5, "prv")
    rdp = compute_epsilon(events, 1e-5, "rdp")
    pld = pld_epsilon(events, 1e-5)
    assert abs(prv - pld) / pld < 0.03
    assert prv <= rdp


def test_merging_identical_settings_changes_nothing() -> None:
    split = [DPEvent(1.0, 0.02, 10)] * 30 + [DPEvent(1.3, 0.02, 50)]
    merged = merge_events(split)
    assert merged == [DPEvent(1.0, 0.02, 300), DPEvent(1.3, 0.02, 50)]
    assert compute_epsilon(split, 1e-5) == compute_epsilon(merged, 1e-5)


def test_no_steps_means_no_epsilon() -> None:
    assert compute_epsilon([], 1e-5) == 0.0
    assert compute_epsilon([DPEvent(1.0, 0.1, 0)], 1e-5) == 0.0


def test_calibration_lands_at_or_below_target() -> None:
    sigma = calibrate_noise_multiplier(3.0, 1e-5, 0.02, 500)
    eps = compute_epsilon([DPEvent(sigma, 0.02, 500)], 1e-5)
    assert 3.0 * 0.98 < eps <= 3.0


def test_calibration_refuses_spent_budget() -> None:
    with pytest.raises(ValueError, match="already spent"):
        calibrate_noise_multiplier(0.5, 1e-5, 0.1, 10, prior_events=[DPEvent(0.5, 0.5, 100)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1}, "steps"),
    ],
)
def test_event_validation(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        DPEvent(**kwargs)


def test_default_delta() -> None:
    assert default_delta(1000) == 1e-5
    assert default_delta(50_000) == 1e-5
    assert default_delta(200_000) == pytest.approx(5e-6)
    with pytest.raises(ValueError):
        default_delta(0)


def test_unknown_accountant_is_named() -> None:
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        compute_epsilon([DPEvent(1.0, 0.1, 1)], 1e-5, "gdp")


def test_calibration_refuses_a_useless_noise_level() -> None:
    prior = [DPEvent(0.8, 0.1, 100)]
    spent = compute_epsilon(prior, 1e-5)
    # a sliver of budget left: only an absurd σ would fit two more rounds
    with pytest.raises(ValueError, match="no noise multiplier up to 10 "):
        calibrate_noise_multiplier(
            spent + 1e-3, 1e-5, 0.1, 50, prior_events=prior, max_noise_multiplier=10.0
        )


# ---------------------------------------------------------------- the per-step RDP memo


def test_the_rdp_memo_is_installed_and_bit_identical_to_opacus() -> None:
    assert rdp_memo.installed()
    orders = RDPAccountant.DEFAULT_ALPHAS
    for q, sigma, steps in [(0.01, 2.0, 1), (0.02, 0.57, 135), (1.0, 0.8, 7), (0.3, 12.0, 0)]:
        ours = rdp_memo.memoized_compute_rdp(
            q=q, noise_multiplier=sigma, steps=steps, orders=orders
        )
        theirs = rdp_memo.OPACUS_COMPUTE_RDP(
            q=q, noise_multiplier=sigma, steps=steps, orders=orders
        )
        assert np.array_equal(ours, theirs)


def test_epsilons_with_the_rdp_memo_equal_opacus_own(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [DPEvent(1.1, 0.02, 40), DPEvent(0.9, 0.05, 10), DPEvent(1.3, 0.02, 30)]
    with_memo = [compute_epsilon(events, 1e-5, name) for name in ("prv", "rdp")]
    monkeypatch.setattr(opacus_rdp, "compute_rdp", rdp_memo.OPACUS_COMPUTE_RDP)
    accounting._epsilon_of_merged.cache_clear()
    try:
        without = [compute_epsilon(events, 1e-5, name) for name in ("prv", "rdp")]
    finally:
        accounting._epsilon_of_merged.cache_clear()
    assert with_memo == without


@pytest.mark.parametrize(
    ("epsilon", "places", "shown"),
    [
        (7.99907, 3, "8.000"),  # f"{7.99907:.3f}" would print 7.999, below the spend
        (7.9990, 3, "7.999"),  # the float nearest 7.999 is just below it: not pushed up
        (0.123401, 4, "0.1235"),
        (1.0, 4, "1.0000"),
        (2.5, 0, "3"),
        (float("inf"), 4, "∞"),
    ],
)
def test_a_printed_epsilon_is_never_below_the_computed_one(epsilon, places, shown) -> None:  # type: ignore[no-untyped-def]
    assert format_epsilon(epsilon, places) == shown
    if shown != "∞":
        assert float(shown) >= epsilon


@pytest.mark.parametrize(
    ("epsilon", "places", "message"),
    [
        (float("nan"), 4, "epsilon must be a number >= 0, got nan"),
        (-0.1, 4, "epsilon must be a number >= 0, got -0.1"),
        (1.0, -1, "places must be >= 0, got -1"),
    ],
)
def test_format_epsilon_refuses_what_is_not_an_epsilon(epsilon, places, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        format_epsilon(epsilon, places)


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    # The Gaussian mechanism of sensitivity 1 and noise 1/μ (Balle & Wang 2018), solved for ε:
    # δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2).
    from scipy.optimize import brentq
    from scipy.stats import norm

    def excess(eps: float) -> float:
        return float(
            norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
        )

    return float(brentq(excess, 0.0, 100.0))


@pytest.mark.parametrize(("sigma", "steps"), [(6.7, 10), (1.5, 1), (20.0, 10)])
def test_a_full_batch_release_costs_the_exact_gaussian_epsilon(sigma, steps) -> None:  # type: ignore[no-untyped-def]
    """Sampling rate 1 (a head refit's steps): T steps at σ are one Gaussian mechanism of
    μ = √T/σ. PRV's upper bound must lie on or just above its closed-form ε, silently."""
    exact = _exact_gaussian_epsilon(np.sqrt(steps) / sigma, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # PRV: log(1 − q) at q = 1 is benign
        prv = compute_epsilon([DPEvent(sigma, 1.0, steps)], 1e-5)
    assert exact <= prv < exact + 0.02


def test_a_full_batch_release_after_dp_sgd_costs_a_fraction_of_its_own_epsilon() -> None:
    """Why the head refit pays: composed after DP-SGD's subsampled steps at small σ (about
    BANKING77's at ε = 8), a Gaussian release adds far less than it would spend alone, and an
    independent accountant agrees."""
    sgd, refit = DPEvent(0.586, 1 / 40, 120), DPEvent(6.7, 1.0, 10)
    both = compute_epsilon([sgd, refit], 1e-5)
    assert both == pytest.approx(pld_epsilon([sgd, refit], 1e-5), rel=0.03)
    added, alone = both - compute_epsilon([sgd], 1e-5), compute_epsilon([refit], 1e-5)
    assert 0 < added < 0.25 * alone


def test_calibration_counts_the_events_that_follow() -> None:
    def refit(sigma: float) -> list[DPEvent]:
        return [DPEvent(10 * sigma, 1.0, 10)]

    alone = calibrate_noise_multiplier(3.0, 1e-5, 0.02, 500)
    sigma = calibrate_noise_multiplier(3.0, 1e-5, 0.02, 500, followed_by=refit)
    eps = compute_epsilon([DPEvent(sigma, 0.02, 500), *refit(sigma)], 1e-5)
    assert 3.0 * 0.98 < eps <= 3.0
    assert sigma > alone
