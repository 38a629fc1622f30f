"""Secure-aggregation (SecAgg+) settings, validated once, shared by server and nodes.

Why it exists: Flower's ``SecAggPlusWorkflow`` accepts settings that protect nothing — a
reconstruction threshold of 1 or 1.0 silently means "all shares" (no dropout tolerance), a
threshold at or above the share count can never be reached, fewer than 3 nodes let each
node's update be derived from the aggregate and its own, and ``timeout=None`` waits forever.
It also quantizes every value into ``[-clipping_range, clipping_range]`` with defaults that
know nothing of our updates. :class:`SecureAggregationConfig` refuses the first kind up front
and derives the second from the training settings, so that quantization error stays far
below the DP noise and values are clipped, never wrapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Largest per-coordinate change one Adam step can make, in units of the learning rate:
#: (1 − β1) / √(1 − β2) for torch's default betas (0.9, 0.999).
ADAM_MAX_STEP = (1 - 0.9) / math.sqrt(1 - 0.999)
#: Local steps per round the derived clipping range covers in the worst case (every step
#: moving a coordinate the same way by the most Adam allows).
CLIPPED_STEPS_BOUND = 1000
#: Fewer nodes than this per round and secure aggregation protects nobody's update.
MIN_SECURE_NODES = 3


def _is_fraction(value: int | float) -> bool:
    return isinstance(value, float)


@dataclass(frozen=True)
class SecureAggregationConfig:
    """How Flower's SecAgg+ is run.

    Parameters
    ----------
    enabled
        Mask every node's update so the server sees only the sum (on by default).
    shares
        Shares each node's secrets are split into: an int ≥ 3, or a fraction in (0, 1] of the
        nodes sampled in the round (1.0: every sampled node holds a share).
    threshold
        Shares needed to reconstruct a dropped node's secrets: an int ≥ 2 and below
        ``shares``, or a fraction in (0, 1) of the share count. Below the share count, so
        that some nodes may drop out after key sharing.
    clipping_range
        Each delta value is clipped into ``[-clipping_range, clipping_range]`` before
        quantization; 0 derives it from the learning rate (see :meth:`clipping_for`).
    quantization_range
        Quantization levels (a power of two).
    modulus_range
        The ring the masks live in (a power of two, at most 2**32 as Flower requires).
    """

    enabled: bool = True
    shares: int | float = 1.0
    threshold: int | float = 0.6
    clipping_range: float = 0.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32

    def __post_init__(self) -> None:
        if isinstance(self.shares, bool) or isinstance(self.threshold, bool):
            raise ValueError("secure aggregation shares and threshold must be numbers")
        if _is_fraction(self.shares):
            if not 0 < self.shares <= 1:
                raise ValueError(
                    f"secagg shares as a fraction must be in (0, 1], got {self.shares}"
                )
        elif self.shares < MIN_SECURE_NODES:
            raise ValueError(f"secagg shares must be >= {MIN_SECURE_NODES}, got {self.shares}")
        if _is_fraction(self.threshold):
            if not 0 < self.threshold < 1:
                raise ValueError(
                    f"secagg threshold as a fraction must be in (0, 1), got {self.threshold}: "
                    "1.0 means every share, i.e. no node may drop out"
                )
        elif self.threshold < 2:
            raise ValueError(
                f"secagg threshold must be >= 2, got {self.threshold} (Flower reads 1 as "
                "'every share', which tolerates no dropout)"
            )
        elif not _is_fraction(self.shares) and self.threshold >= self.shares:
            raise ValueError(
                f"secagg threshold ({self.threshold}) must be below the shares ({self.shares}): "
                "otherwise no node may drop out"
            )
        if not (math.isfinite(self.clipping_range) and self.clipping_range >= 0):
            raise ValueError(f"secagg clipping range must be >= 0, got {self.clipping_range}")
        for name, value, top in (
            ("quantization_range", self.quantization_range, 2**31),
            ("modulus_range", self.modulus_range, 2**32),
        ):
            if not (2 <= value <= top and value & (value - 1) == 0):
                raise ValueError(f"secagg {name} must be a power of two <= {top}, got {value}")
        if self.modulus_range <= self.quantization_range:
            raise ValueError("secagg modulus_range must exceed quantization_range")

    def resolved(self, sampled: int) -> tuple[int, int]:
        """(shares, threshold) Flower will use in a round with ``sampled`` nodes.

        Mirrors ``SecAggPlusWorkflow.setup_stage``: a fractional share count is rounded,
        made odd when below the sample, and raised to the sample when ≤ 2; a fractional
        threshold is rounded and raised to at least 2.
        """
        if _is_fraction(self.shares):
            shares = round(self.shares * sampled)
            if shares < sampled and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = sampled
        else:
            shares = int(self.shares)
        if _is_fraction(self.threshold):
            threshold = max(round(self.threshold * shares), 2)
        else:
            threshold = int(self.threshold)
        return shares, threshold

    def check_round(self, sampled: int) -> None:
        """Refuse a round of ``sampled`` nodes that would not protect or not tolerate dropout.

        Raises
        ------
        ValueError
            With fewer than 3 nodes, more shares than nodes, a threshold not below the
            shares, or a sum of quantized values that could wrap around the modulus.
        """
        if sampled < MIN_SECURE_NODES:
            raise ValueError(
                f"secure aggregation needs at least {MIN_SECURE_NODES} nodes per round, got "
                f"{sampled}: with fewer, the server could subtract one node's update from the "
                "sum (use more nodes, or --no-secure-agg for a comparison run without it)"
            )
        shares, threshold = self.resolved(sampled)
        if shares > sampled:
            raise ValueError(f"secagg shares ({shares}) exceed the nodes per round ({sampled})")
        if threshold >= shares:
            raise ValueError(
                f"with {sampled} nodes per round the reconstruction threshold ({threshold}) is "
                f"not below the shares ({shares}): no node could drop out"
            )
        if (sampled + 1) * self.quantization_range >= self.modulus_range:
            raise ValueError(
                f"{sampled} nodes × quantization range {self.quantization_range} could wrap "
                f"around the modulus {self.modulus_range}"
            )

    def clipping_for(self, learning_rate: float) -> float:
        """The clipping range used: the configured one, or one no Adam run of up to
        ``CLIPPED_STEPS_BOUND`` local steps at ``learning_rate`` can exceed."""
        if self.clipping_range > 0:
            return self.clipping_range
        return ADAM_MAX_STEP * learning_rate * CLIPPED_STEPS_BOUND
