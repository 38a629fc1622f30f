"""An independent ε for cross-checks: Google's dp-accounting PLD accountant.

Why it exists: the ε fedlora enforces comes from Opacus (PRV, RDP alongside); tests and
benchmarks compare it with a second, independently written accountant on the same events.
``dp-accounting`` is a test extra (``pip install -e '.[test]'``), never needed at run time, so
it is imported only when called.
"""

from __future__ import annotations

from collections.abc import Iterable

from privacy.accounting import DPEvent, merge_events


def pld_epsilon(events: Iterable[DPEvent], delta: float) -> float:
    """ε of ``events`` at ``delta`` by dp-accounting's PLD accountant (Poisson-subsampled
    Gaussian, add/remove adjacency, as Opacus assumes).

    Raises
    ------
    ImportError
        If dp-accounting is not installed (it is part of the ``test`` extra).
    """
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    accountant = PLDAccountant()
    for event in merge_events(events):
        accountant.compose(
            PoissonSampledDpEvent(event.sample_rate, GaussianDpEvent(event.noise_multiplier)),
            event.steps,
        )
    return float(accountant.get_epsilon(delta))
