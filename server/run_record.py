"""``metrics.json``: the record of a federated run, rewritten atomically after every round.

Shape (more keys welcome)::

    {"config": {...}, "initial": {"accuracy": a, "macro_f1": f},
     "rounds": [{"round": 1, "completed": true, "accuracy": a, "macro_f1": f, "train_loss": l,
                 "seconds": s, "nodes": {"<node>": {"participated": true, "epsilon": e,
                 "bytes_sent": n, "bytes_received": n}}}],
     "final": {"accuracy": a, "macro_f1": f, "epsilon": {"<node>": e}},
     "stopped_nodes": {"<node>": {"round": r, "reason": "..."}},
     "released_statistics": [...]}

``bytes_sent`` / ``bytes_received`` are the adapter payload bytes (float32 tensors) per node
and round, as seen by the node: what it uploads and what it downloads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.evaluation import EvalResult
from privacy.durable_io import write_json_atomic

METRICS_FILE = "metrics.json"


def eval_record(result: EvalResult | None) -> dict[str, float] | None:
    """The JSON form of an evaluation."""
    if result is None:
        return None
    return {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "loss": result.loss}


@dataclass
class RunRecord:
    """Accumulates the run's metrics and writes them to ``OUT/metrics.json``."""

    out_dir: Path
    config: dict[str, Any]
    initial: dict[str, float] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stopped_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    released_statistics: list[str] = field(default_factory=list)

    @classmethod
    def resume(cls, out_dir: Path, config: dict[str, Any], completed_round: int) -> RunRecord:
        """Continue an earlier record, dropping any round after the last checkpoint."""
        path = out_dir / METRICS_FILE
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--resume: cannot read {path}: {exc}") from exc
        record = cls(out_dir, config, initial=old.get("initial"))
        record.rounds = [r for r in old.get("rounds", []) if r["round"] <= completed_round]
        record.stopped_nodes = {
            name: info
            for name, info in old.get("stopped_nodes", {}).items()
            if info["round"] <= completed_round
        }
        record.released_statistics = list(old.get("released_statistics", []))
        return record

    def latest_epsilons(self) -> dict[str, float]:
        """Each node's most recent reported ε (cumulative over its ledger)."""
        latest: dict[str, float] = {}
        for entry in self.rounds:
            for name, node in entry.get("nodes", {}).items():
                if node.get("epsilon") is not None:
                    latest[name] = node["epsilon"]
        return latest

    def as_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        return {
            "config": self.config,
            "initial": self.initial,
            "rounds": self.rounds,
            "stopped_nodes": self.stopped_nodes,
            "released_statistics": self.released_statistics,
            "final": self.final,
        }

    def write(self) -> None:
        """Rewrite ``metrics.json`` atomically."""
        write_json_atomic(self.out_dir / METRICS_FILE, self.as_dict())
