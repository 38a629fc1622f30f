"""Seeded, stratified train/evaluation splits of one data set.

Used when an operator has no separate evaluation file: every class keeps (about) the same
share in both parts, and the same seed always gives the same split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def stratified_split(
    label_ids: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split record indices into (train, held-out) with ``fraction`` of each class held out.

    A class with a single record stays in the training part; every other class contributes
    at least one held-out record.

    Parameters
    ----------
    label_ids
        Class index of every record.
    fraction
        Share of each class to hold out, in (0, 1).
    seed
        Seed of the shuffle.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted training indices and sorted held-out indices.
    """
    if not (0 < fraction < 1):
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(label_ids)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        rng.shuffle(members)
        take = min(len(members) - 1, max(1, math.floor(len(members) * fraction + 0.5)))
        held.append(members[:take])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx
