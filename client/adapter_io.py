"""The adapter on disk: named float32 tensors (safetensors) plus what is needed to rebuild it.

An adapter directory holds ``adapter.safetensors`` (LoRA matrices and head, never base-model
weights) and ``adapter_config.json`` (model configuration and label set). It is written as a
whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from client.model import ModelConfig
from privacy.durable_io import replace_directory_atomic

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SavedAdapter:
    """An adapter read back from disk."""

    state: dict[str, np.ndarray]
    model_config: ModelConfig
    labels: tuple[str, ...]
    extra: dict[str, Any]


def save_adapter(
    directory: str | Path,
    state: Mapping[str, np.ndarray],
    model_config: ModelConfig,
    labels: tuple[str, ...],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the adapter directory atomically (replacing an older one).

    Parameters
    ----------
    directory
        Target directory (e.g. ``OUT/adapter``).
    state
        Named arrays from :func:`client.model.adapter_state` (the whole adapter).
    model_config, labels
        Enough to rebuild the model the state belongs to.
    extra
        JSON-serialisable metadata (e.g. round number).
    """
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in state.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model_config),
        "labels": list(labels),
        "extra": dict(extra or {}),
    }

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    replace_directory_atomic(directory, fill)


def load_adapter(directory: str | Path) -> SavedAdapter:
    """Read an adapter directory written by :func:`save_adapter`.

    Raises
    ------
    ValueError
        If a file is missing or the configuration is not one this version understands.
    """
    from safetensors.numpy import load_file

    root = Path(directory)
    weights, config_path = root / ADAPTER_WEIGHTS, root / ADAPTER_CONFIG
    for required in (weights, config_path):
        if not required.is_file():
            raise ValueError(f"{required}: missing (not an adapter directory written by fedlora)")
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    raw = dict(meta["model_config"])
    raw["target_modules"] = tuple(raw["target_modules"])
    return SavedAdapter(
        state=dict(load_file(str(weights))),
        model_config=ModelConfig(**raw),
        labels=tuple(meta["labels"]),
        extra=dict(meta.get("extra", {})),
    )
