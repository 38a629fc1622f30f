"""An exponential moving average of the trainable parameters over optimizer steps.

Why it exists: under DP-SGD every step carries fresh Gaussian noise, and the last iterate
keeps the noise of its last few steps. Averaging the iterates (De et al., 2022, "Unlocking
high-accuracy differentially private image classification through scale") cancels part of
that noise. It is post-processing of the released iterates, so it costs no privacy: the
ledger's events are the same with or without it.

The average starts at zero and is bias-corrected like Adam's moments, so a short run (a
federated node's round of a few steps) gets the mean of its own iterates, not a mix with
the starting point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ParameterAverage:
    """Bias-corrected exponential moving average of some parameters.

    Parameters
    ----------
    params
        The parameters to average (the trainable ones); they are read after each step and
        overwritten by :meth:`copy_to_parameters`.
    decay
        Weight of the running average per step, in (0, 1); the average spans about
        ``1 / (1 - decay)`` steps.

    Raises
    ------
    ValueError
        If ``decay`` is not in (0, 1) or ``params`` is empty.
    """

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        if not (0 < decay < 1):
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if not params:
            raise ValueError("no parameters to average")
        self.decay = decay
        self.updates = 0
        self._params = list(params)
        self._sums = [torch.zeros_like(p, dtype=torch.float32) for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the average (call after each step)."""
        for total, param in zip(self._sums, self._params, strict=True):
            total.mul_(self.decay).add_(param.detach().float(), alpha=1 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """Overwrite the parameters with the bias-corrected average (no-op before any update)."""
        if self.updates == 0:
            return
        correction = 1 - self.decay**self.updates
        for total, param in zip(self._sums, self._params, strict=True):
            param.copy_((total / correction).to(param.dtype))
