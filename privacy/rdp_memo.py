"""A memo for Opacus's per-step RDP of the subsampled Gaussian mechanism.

Why it exists: Opacus computes the RDP of one subsampled-Gaussian step in pure Python, order
by order (~60 orders, each a series), on every call: its RDP accountant does it for every
event of a history, and its PRV accountant does it again to size its discretisation domain.
Verifying a ledger asks the same (q, σ) thousands of times, so this was about 40% of every
PRV call. The RDP of ``steps`` identical steps is ``steps`` times the RDP of one
(``compute_rdp`` itself multiplies by ``steps`` last), so the per-step array can be computed
once per (q, σ, orders) and reused; the result is bit-for-bit what Opacus returns.

``install`` swaps the memoised function into ``opacus.accountants.analysis.rdp``, the one
place both accountants look it up; ``privacy.accounting`` installs it on import.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from opacus.accountants.analysis import rdp as opacus_rdp

#: Opacus's own function, kept for the fallback and for tests that compare against it.
OPACUS_COMPUTE_RDP = opacus_rdp.compute_rdp


@functools.lru_cache(maxsize=4096)
def _per_step_rdp(q: float, noise_multiplier: float, orders: tuple[float, ...]) -> np.ndarray:
    rdp = np.asarray(
        OPACUS_COMPUTE_RDP(q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(orders))
    )
    rdp.flags.writeable = False  # shared by every caller
    return rdp


def memoized_compute_rdp(*, q: float, noise_multiplier: float, steps: int, orders: Any) -> Any:
    """Drop-in for ``opacus.accountants.analysis.rdp.compute_rdp`` with a per-(q, σ) memo.

    Parameters
    ----------
    q, noise_multiplier, steps, orders
        As Opacus's ``compute_rdp``. A scalar order (not memoised) goes straight to Opacus.

    Returns
    -------
    numpy.ndarray or float
        Exactly what Opacus's function returns for the same arguments.
    """
    if isinstance(orders, (int, float)):
        return OPACUS_COMPUTE_RDP(
            q=q, noise_multiplier=noise_multiplier, steps=steps, orders=orders
        )
    return _per_step_rdp(float(q), float(noise_multiplier), tuple(orders)) * steps


def install() -> None:
    """Make both Opacus accountants use ``memoized_compute_rdp`` (idempotent)."""
    opacus_rdp.compute_rdp = memoized_compute_rdp


def installed() -> bool:
    """Whether Opacus currently uses the memoised function."""
    return opacus_rdp.compute_rdp is memoized_compute_rdp
