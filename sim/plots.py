"""PNG plots of a federated run: global accuracy per round, and each node's ε per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privacy.durable_io import atomic_writer


def pyplot_agg() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(record: dict[str, Any], path: Path) -> None:
    """Test accuracy and macro-F1 of the global adapter against the round (round 0 = start)."""
    plt = pyplot_agg()
    rounds = [0] if record.get("initial") else []
    acc = [record["initial"]["accuracy"]] if record.get("initial") else []
    f1 = [record["initial"]["macro_f1"]] if record.get("initial") else []
    for entry in record["rounds"]:
        if entry.get("accuracy") is not None:
            rounds.append(entry["round"])
            acc.append(entry["accuracy"])
            f1.append(entry["macro_f1"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, acc, marker="o", label="accuracy")
    ax.plot(rounds, f1, marker="s", label="macro-F1")
    ax.set_xlabel("round")
    ax.set_ylabel("server-held test split")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Global adapter")
    _save(plt, fig, path)


def plot_epsilon(record: dict[str, Any], path: Path) -> None:
    """Each node's cumulative ε (PRV accountant) against the round."""
    plt = pyplot_agg()
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in record["rounds"]:
        for name, node in entry.get("nodes", {}).items():
            if node.get("epsilon") is not None:
                xs, ys = series.setdefault(name, ([], []))
                xs.append(entry["round"])
                ys.append(node["epsilon"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, marker="o", label=name)
    budget = record.get("config", {}).get("target-epsilon")
    if budget:
        ax.axhline(budget, color="grey", linestyle="--", label=f"target ε={budget:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent (PRV, cumulative)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small", ncol=2)
    ax.set_title("Privacy spent per node")
    _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    fig.tight_layout()
    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
