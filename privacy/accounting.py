"""Privacy accounting from recorded DP-SGD events.

Every ε that fedlora prints is computed here, by a named Opacus accountant, from a list of
recorded events ``(noise multiplier σ, Poisson sampling rate q, steps)``: the events are the
source of truth, never a running total. Events with the same (σ, q) are merged before
accounting, so a history of thousands of rounds costs the same as one round per distinct
setting.

The guarantee is record-level (ε, δ)-DP under add/remove-one adjacency with Poisson sampling,
composed over every event given. ``prv`` (Gopi et al. 2021, upper bound of its error interval)
is the enforcing accountant; ``rdp`` is the looser cross-check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant

from privacy import rdp_memo
from privacy.accountant_names import ACCOUNTANTS

ADJACENCY = "add/remove one record"
SAMPLING = "Poisson"
#: Relative precision asked of the PRV accountant; it reports the upper end of its interval.
PRV_EPS_ERROR = 0.01
#: The largest noise multiplier calibration will consider before declaring a target unreachable.
MAX_NOISE_MULTIPLIER = 1000.0

rdp_memo.install()  # bit-identical results, without recomputing per-step RDP every call


@dataclass(frozen=True)
class DPEvent:
    """One run of ``steps`` DP-SGD steps with noise multiplier σ and sampling rate q.

    Parameters
    ----------
    noise_multiplier
        σ: Gaussian noise std divided by the clipping norm, > 0.
    sample_rate
        q: Poisson sampling probability of each record per step, in (0, 1].
    steps
        Number of noisy optimizer steps taken with these settings, ≥ 0.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(
                f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier}"
            )
        if not (0 < self.sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")


def format_epsilon(epsilon: float, places: int = 4) -> str:
    """ε for display, rounded *up* to ``places`` decimals: a printed ε never understates a spend.

    Parameters
    ----------
    epsilon
        The ε an accountant computed (``inf`` when the events give no guarantee).
    places
        Decimals to keep (≥ 0).

    Returns
    -------
    str
        e.g. ``format_epsilon(7.99907, 3) == "8.000"`` where ``f"{7.99907:.3f}"`` reads
        ``"7.999"``; ``"∞"`` for an infinite ε.

    Raises
    ------
    ValueError
        If ``epsilon`` is NaN or negative, or ``places`` is negative.
    """
    if places < 0:
        raise ValueError(f"places must be >= 0, got {places}")
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon}")
    if math.isinf(epsilon):
        return "∞"
    return str(Decimal(epsilon).quantize(Decimal(1).scaleb(-places), rounding=ROUND_CEILING))


def default_delta(num_records: int) -> float:
    """The default δ for a data set: ``min(1e-5, 1/N)``.

    Parameters
    ----------
    num_records
        N, the number of records in the node's training set (> 0).
    """
    if num_records <= 0:
        raise ValueError(f"num_records must be > 0, got {num_records}")
    return min(1e-5, 1.0 / num_records)


def merge_events(events: Iterable[DPEvent]) -> list[DPEvent]:
    """Merge events with identical (σ, q) by adding their steps; drops zero-step events.

    Composition of identical mechanisms is order-independent, so merging changes no ε.
    The result keeps the order in which each (σ, q) first appeared.
    """
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        key = (event.noise_multiplier, event.sample_rate)
        merged[key] = merged.get(key, 0) + event.steps
    return [DPEvent(s, q, n) for (s, q), n in merged.items() if n > 0]


def _accountant_for(name: str, events: Sequence[DPEvent]) -> IAccountant:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; expected one of {', '.join(ACCOUNTANTS)}")
    accountant: IAccountant = PRVAccountant() if name == "prv" else RDPAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    return accountant


def _check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def compute_epsilon(events: Iterable[DPEvent], delta: float, accountant: str = "prv") -> float:
    """ε spent by a sequence of DP-SGD events at the given δ.

    Parameters
    ----------
    events
        The recorded events; merged by (σ, q) before accounting.
    delta
        Target δ in (0, 1).
    accountant
        ``"prv"`` (upper bound of the PRV estimate) or ``"rdp"``.

    Returns
    -------
    float
        ε; 0.0 when no step was taken.
    """
    _check_delta(delta)
    merged = tuple(merge_events(events))
    if not merged:
        return 0.0
    return _epsilon_of_merged(merged, delta, accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_of_merged(merged: tuple[DPEvent, ...], delta: float, accountant: str) -> float:
    # A pure function of its (hashable, frozen) arguments: a node asks for the same ε when it
    # projects, trains and records a spend, and a verifier once per ledger entry.
    acct = _accountant_for(accountant, merged)
    # At sampling rate 1 (a full-batch release) the PRV code takes log(1 − q) = −inf, which
    # it handles correctly but warns about; the result matches the exact Gaussian ε.
    with np.errstate(divide="ignore"):
        if accountant == "prv":
            return float(acct.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        return float(acct.get_epsilon(delta=delta))


def _epsilon_or_inf(events: Sequence[DPEvent], delta: float, accountant: str) -> float:
    # The PRV accountant refuses some extreme (tiny σ) settings; for a search those mean "too
    # much privacy loss", never "fine".
    try:
        eps = compute_epsilon(events, delta, accountant)
    except (ValueError, RuntimeError, OverflowError, FloatingPointError):
        return math.inf
    return eps if math.isfinite(eps) else math.inf


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    prior_events: Sequence[DPEvent] = (),
    accountant: str = "prv",
    relative_tolerance: float = 0.005,
    initial_guess: float | None = None,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
    followed_by: Callable[[float], Sequence[DPEvent]] | None = None,
) -> float:
    """Smallest σ (within tolerance) whose ε after ``prior_events`` plus ``steps`` new steps
    at rate ``sample_rate`` does not exceed ``target_epsilon``.

    The search keeps a bracket ``eps(low) > target >= eps(high)`` and always returns its upper
    end, so the returned σ satisfies the target under the named accountant; it never trades a
    little ε for utility. Each accountant call is costly (PRV: ~0.3 s), so the bracket is
    narrowed by false position on log ε (Illinois variant) rather than plain bisection.

    Parameters
    ----------
    target_epsilon
        Total budget ε (including what ``prior_events`` already spent), > 0.
    delta
        δ in (0, 1).
    sample_rate
        Poisson sampling rate q of the planned steps.
    steps
        Number of planned steps (> 0).
    prior_events
        Spend already recorded for this data set.
    accountant
        Accountant used for calibration (``"prv"`` by default).
    relative_tolerance
        Stop when the σ bracket is narrower than this fraction of σ.
    initial_guess
        A σ expected to be close (e.g. last round's); only speeds the search up.
    max_noise_multiplier
        The largest σ worth training with; above it the target counts as unreachable.
    followed_by
        Events planned after the steps, as a function of their σ (e.g. a full-batch refit
        whose noise scales with σ); they count against the target too. Their noise must
        not fall as σ rises, or the search loses its bracket.

    Raises
    ------
    ValueError
        If the prior spend alone already exceeds the target, or no σ up to
        ``max_noise_multiplier`` reaches it.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon}")
    _check_delta(delta)
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    prior = list(prior_events)
    spent = _epsilon_or_inf(prior, delta, accountant) if prior else 0.0
    if spent >= target_epsilon:
        raise ValueError(
            f"the budget is already spent: ε={format_epsilon(spent)} from earlier events ≥ target "
            f"ε={target_epsilon}"
        )

    def excess(sigma: float) -> float:
        """log(ε(σ) / target): > 0 over budget, <= 0 within it."""
        planned = [DPEvent(sigma, sample_rate, steps)]
        if followed_by is not None:
            planned.extend(followed_by(sigma))
        eps = _epsilon_or_inf([*prior, *planned], delta, accountant)
        return math.inf if math.isinf(eps) else math.log(max(eps, 1e-300) / target_epsilon)

    low, high = _bracket(excess, initial_guess, max_noise_multiplier)
    f_low, f_high = excess(low) if low > 0 else math.inf, excess(high)
    side = 0
    while high - low > relative_tolerance * high:
        if math.isinf(f_low):
            mid = (low + high) / 2
        else:
            mid = high - f_high * (high - low) / (f_high - f_low)
            mid = min(max(mid, low + 0.01 * (high - low)), high - 0.01 * (high - low))
        f_mid = excess(mid)
        if f_mid > 0:
            low, f_low = mid, f_mid
            if side == -1:
                f_high /= 2  # Illinois: stop the retained end from stalling the search
            side = -1
        else:
            high, f_high = mid, f_mid
            if side == 1:
                f_low /= 2
            side = 1
    return high


def _bracket(
    excess: Callable[[float], float], guess: float | None, ceiling: float
) -> tuple[float, float]:
    """(low, high) with excess(low) > 0 >= excess(high); low may be 0."""
    if guess is not None and 0 < guess * 1.02 <= ceiling:
        low, high = guess * 0.98, guess * 1.02
        if excess(high) <= 0:
            return (low, high) if excess(low) > 0 else (0.0, low)
        low = high
    else:
        low = 0.0
    high = min(max(low * 2, 1.0), ceiling)
    while excess(high) > 0:
        if high >= ceiling:
            raise ValueError(
                f"no noise multiplier up to {ceiling:g} keeps ε within the target "
                "with this δ, sampling rate and number of steps"
            )
        low, high = high, min(high * 2, ceiling)
    return low, high
