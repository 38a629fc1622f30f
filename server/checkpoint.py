"""Atomic per-round checkpoints of the global adapter, and resuming from them.

After every round the server writes the global adapter, the round number and the run
configuration to ``OUT/checkpoint/`` in one atomic directory swap, so an interrupted run can
continue from the last completed round without counting any round twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.adapter_io import load_adapter, save_adapter
from client.run_settings import RunSettings

CHECKPOINT_DIR = "checkpoint"
#: Run-config keys that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"resume", "num-server-rounds", "round-timeout", "out-dir"})


@dataclass(frozen=True)
class Checkpoint:
    """The global adapter after ``round`` completed rounds."""

    state: dict[str, np.ndarray]
    round: int


def save_checkpoint(
    out_dir: Path, state: Mapping[str, np.ndarray], completed_round: int, settings: RunSettings
) -> None:
    """Write ``OUT/checkpoint`` atomically (replacing the previous one)."""
    save_adapter(
        out_dir / CHECKPOINT_DIR,
        state,
        settings.model,
        settings.labels,
        extra={"round": completed_round, "run_config": settings.to_run_config()},
    )


def load_checkpoint(out_dir: Path, settings: RunSettings) -> Checkpoint:
    """Read the checkpoint of an interrupted run and check it belongs to this configuration.

    Raises
    ------
    ValueError
        If there is no checkpoint, or it was written with settings that would change the
        meaning of the run (model, labels, privacy or optimisation settings).
    """
    path = out_dir / CHECKPOINT_DIR
    if not path.is_dir():
        raise ValueError(f"--resume: no checkpoint at {path} (nothing to resume)")
    saved = load_adapter(path)
    old = dict(saved.extra.get("run_config", {}))
    new = settings.to_run_config()
    changed = sorted(
        key
        for key in set(old) | set(new)
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key)
    )
    if changed:
        raise ValueError(
            f"--resume: the checkpoint in {path} was written with different settings "
            f"({', '.join(changed)}); resume with the original flags"
        )
    completed = int(saved.extra["round"])
    if completed >= settings.rounds:
        raise ValueError(
            f"--resume: the checkpoint already completed {completed} of {settings.rounds} rounds"
        )
    return Checkpoint(saved.state, completed)
