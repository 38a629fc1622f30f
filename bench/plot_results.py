"""The figures of docs/results.md, drawn from the benchmark JSON outputs.

Why it exists: the benchmark scripts write tables and JSON, but docs/results.md also shows
three figures, and they must be redrawn whenever a benchmark is rerun. This script only reads
what the benchmarks wrote (it runs nothing) and writes, under ``--out``:

- ``throughput.png``: examples/s of every configuration of ``bench/local_step.py --json``;
- ``accuracy_vs_epsilon.png``: test accuracy against the target ε of the utility study cells
  (``bench/utility.py``'s ``OUT/utility.json``), one line per data set and setting;
- ``accuracy_vs_round.png``: per-round accuracy of the federated cells, read from the
  ``metrics.json`` of each cell's run directory.

Usage: ``python bench/plot_results.py [--local-step PATH] [--utility PATH] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.durable_io import atomic_writer
from sim.plots import pyplot_agg

REPO = Path(__file__).resolve().parents[1]
DP_COLOURS = {"none": "tab:blue", "hooks": "tab:orange", "ghost": "tab:green"}
#: Settings that may split a series, when a cell has them (a flag appears by its name alone).
EXTRA_SETTINGS = ("head", "prior", "descriptions")


@dataclass
class StudyCell:
    """A finished row of ``utility.json`` with the ``result.json`` of each of its seeds."""

    dataset: str
    cell: str
    description: str
    series: str
    epsilon: float | None
    accuracy: float
    accuracy_std: float | None
    extra: str  # the EXTRA_SETTINGS it has, as text ("head prototype"), or ""
    initial: float | None  # accuracy before training (mean over seeds), when recorded
    results: list[dict[str, Any]]  # with "_folder": the seed folder it was read from


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _legend_below(fig: Any, ncol: int = 2) -> None:
    """One legend for all panels, under them (labels shared by panels appear once)."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.tight_layout()
    where = {"loc": "upper center", "bbox_to_anchor": (0.5, 0), "frameon": False}
    fig.legend(handles.values(), handles.keys(), ncol=ncol, fontsize="small", **where)


def plot_throughput(payload: dict[str, Any], path: Path) -> bool:
    """Horizontal bars of examples/s per configuration, fastest on top.

    Parameters
    ----------
    payload
        The JSON written by ``bench/local_step.py --json``.
    path
        The PNG to write.

    Returns
    -------
    bool
        Whether a plot was written (``False``: no measured configuration).
    """
    from matplotlib.patches import Patch

    rows = payload.get("rows", [])
    ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: r["examples_per_s"])
    failed = [r for r in rows if r.get("status") != "ok"]  # "unsupported: <reason>"
    if not ok:
        return False
    fastest = ok[-1]["examples_per_s"]
    top = max(max(r.get("examples_per_s_repeats") or [r["examples_per_s"]]) for r in ok)
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.4))
    note = {"va": "center", "fontsize": "small"}
    for y, row in enumerate(failed):
        ax.text(top * 0.01, y, str(row.get("status", "failed"))[:70], color="grey", **note)
    for y, row in enumerate(ok, start=len(failed)):
        value = row["examples_per_s"]
        repeats = row.get("examples_per_s_repeats") or [value]
        spread = [[value - min(repeats)], [max(repeats) - value]]
        colour = DP_COLOURS.get(row.get("dp", ""), "grey")
        ax.barh(y, value, color=colour, xerr=spread, capsize=3)
        ax.text(max(repeats) + top * 0.01, y, f"{value:.1f} ({value / fastest:.2f}×)", **note)
    ax.set_yticks(range(len(rows)), [r["name"] for r in failed + ok])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("examples/s: median of repeats (whiskers: min–max), × the fastest")
    ax.grid(axis="x", alpha=0.3)
    dps = {r.get("dp") for r in ok}
    patches = [Patch(color=c, label=f"DP: {d}") for d, c in DP_COLOURS.items() if d in dps]
    ax.legend(handles=patches, loc="lower right", fontsize="small")
    model = str(payload.get("model", "model")).rsplit("/", 1)[-1]
    cpus = (payload.get("machine") or {}).get("cpus", "?")
    batch = payload.get("batch_size", "?")
    ax.set_title(f"Local training throughput: {model}, batch {batch}, {cpus} CPUs")
    _write(plt, fig, path)
    return True


def _setting(key: str, row: dict[str, Any], results: Sequence[dict[str, Any]]) -> Any:
    """``key`` from the row, a result, its settings or its cell settings (first one set)."""
    for result in results:
        settings = result.get("settings") or {}
        for source in (row, result, settings, settings.get("cell") or {}):
            if source.get(key) is not None:
                return source[key]
    return row.get(key)


def _setting_text(key: str, value: Any) -> str:
    """``"head prototype"``; a flag that is on is its name alone (``"descriptions"``)."""
    return key if value is True else f"{key} {value}"


def load_study(utility_json: Path) -> list[StudyCell]:
    """The finished cells of a utility study (``result.json`` files are read beside it).

    Parameters
    ----------
    utility_json
        ``OUT/utility.json`` of ``bench/utility.py``; cell results are looked up under
        ``OUT/cells/<data set>/<cell>/seed-<k>/result.json``.

    Returns
    -------
    list of StudyCell
        One per row with an accuracy, in the file's order.
    """
    out = utility_json.parent
    cells = []
    for row in _load(utility_json).get("rows", []):
        if row.get("accuracy") is None:
            continue
        results = []
        for seed in row.get("seeds") or []:
            folder = out / "cells" / row["dataset"] / row["cell"] / f"seed-{seed}"
            try:
                results.append(_load(folder / "result.json") | {"_folder": str(folder)})
            except (OSError, ValueError):
                print(f"note: {folder}/result.json unreadable", file=sys.stderr)
        description = row.get("description") or _setting("description", row, results) or ""
        parts = [p for p in description.split(", ") if not p.startswith(("DP ", "no DP"))]
        extra = [(k, _setting(k, row, results)) for k in EXTRA_SETTINGS]
        extra = [(k, v) for k, v in extra if v is not None and v is not False]
        for key, value in extra:
            said = key if value is True else str(value)  # what the description may say
            if said not in description:
                parts.append(_setting_text(key, value))
        initial = [r["initial_accuracy"] for r in results if r.get("initial_accuracy") is not None]
        if not initial and row.get("initial_accuracy") is not None:
            initial = [row["initial_accuracy"]]
        epsilon = _setting("target_epsilon", row, results)
        epsilon = _setting("epsilon", row, results) if epsilon is None else epsilon
        stated = re.search(r"DP ε=(\d+(?:\.\d*)?)", description)  # when no result.json
        epsilon = float(stated.group(1)) if epsilon is None and stated else epsilon
        names = (row["dataset"], row["cell"], description or row["cell"], ", ".join(parts))
        scores = (
            row["accuracy"],
            row.get("accuracy_std"),
            ", ".join(_setting_text(*kv) for kv in extra),
        )
        mean = statistics.fmean(initial) if initial else None
        cells.append(StudyCell(*names, epsilon, *scores, mean, results))
    return cells


def _panels(plt: Any, datasets: Sequence[str]) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(5.5 * len(datasets), 4.2), sharey=True, squeeze=False
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        ax.set_title(dataset)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    return fig, list(axes[0])


def distinct_colours(names: Sequence[str] | dict[str, None]) -> dict[str, Any]:
    """One colour per name: matplotlib's 10-colour cycle, or tab20 when there are more (the
    cycle would repeat a colour)."""
    import matplotlib

    names = list(names)
    if len(names) <= 10:
        return {name: f"C{i}" for i, name in enumerate(names)}
    palette = matplotlib.colormaps["tab20"]
    return {name: palette(i % 20) for i, name in enumerate(names)}


def plot_accuracy_vs_epsilon(cells: Sequence[StudyCell], path: Path) -> bool:
    """Accuracy against target ε (log scale), one panel per data set, one line per setting.

    No-DP cells are dashed horizontal lines; the mean accuracy before training, when the
    results have ``initial_accuracy``, a dotted line (one per head/prior value, when cells have
    them). Series sharing an ε are dodged slightly sideways. Returns whether a plot was written.
    """
    if not cells:
        return False
    from matplotlib.ticker import NullFormatter

    plt = pyplot_agg()
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    colours = distinct_colours(dict.fromkeys(c.series for c in cells))
    fig, axes = _panels(plt, datasets)
    for ax, dataset in zip(axes, datasets, strict=True):
        mine = [c for c in cells if c.dataset == dataset]
        for i, (series, colour) in enumerate(colours.items()):
            dp = [c for c in mine if c.series == series and c.epsilon is not None]
            dp.sort(key=lambda c: c.epsilon or 0.0)
            dodge = 1.025 ** (i - (len(colours) - 1) / 2)  # series sharing an ε stay apart
            if dp:
                xs, ys = [(c.epsilon or 0.0) * dodge for c in dp], [c.accuracy for c in dp]
                errors = [c.accuracy_std or 0 for c in dp]  # sample std over seeds
                ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color=colour, label=series)
            for c in mine:
                if c.series == series and c.epsilon is None:
                    ax.axhline(c.accuracy, color=colour, linestyle="--", label=f"{series}: no DP")
        extras = dict.fromkeys(c.extra for c in mine if c.initial is not None)
        for extra, shade in zip(extras, ("grey", "black", "silver", "tan"), strict=False):
            values = [c.initial for c in mine if c.extra == extra and c.initial is not None]
            label = f"before training ({extra})" if extra else "before training"
            ax.axhline(statistics.fmean(values), color=shade, linestyle=":", label=label)
        ticks = sorted({float(c.epsilon) for c in mine if c.epsilon is not None})
        ax.set_xscale("log")
        ax.set_xlim(min(ticks, default=1) / 1.6, max(ticks, default=8) * 1.6)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("target ε (per node when federated)")
    _legend_below(fig)
    _write(plt, fig, path)
    return True


def _run_metrics(result: dict[str, Any]) -> dict[str, Any] | None:
    """A federated result's ``metrics.json`` (``run_dir`` is relative to the result's ``cwd``;
    ``<seed folder>/run`` is tried when the tree has moved)."""
    run_dir = result.get("run_dir")
    tries = [Path(result.get("cwd", ".")) / run_dir, Path(run_dir)] if run_dir else []
    tries.append(Path(result["_folder"]) / "run")
    for folder in tries:
        try:
            return dict(_load(folder / "metrics.json"))
        except (OSError, ValueError):
            continue
    print(f"note: {result['_folder']}: no metrics.json in {run_dir}; skipped", file=sys.stderr)
    return None


def plot_accuracy_vs_round(cells: Sequence[StudyCell], path: Path) -> bool:
    """Accuracy after each round of every federated cell (round 0: before training).

    DP cells are solid, no-DP cells dashed; one line per cell and seed (a cell's seeds share
    its colour and legend entry); rounds without an accuracy are left out. Returns whether a
    plot was written (``False``: no federated cell with a ``metrics.json``).
    """
    lines = []
    for c in cells:
        for result in c.results:
            if result.get("kind") != "federated" and not _setting("federated", {}, [result]):
                continue
            metrics = _run_metrics(result)
            if metrics is None:
                continue
            points = [(0, (metrics.get("initial") or {}).get("accuracy"))]
            points += [(e.get("round"), e.get("accuracy")) for e in metrics.get("rounds", [])]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                lines.append((c, f"{c.cell}: {c.description}", points))
    if not lines:
        return False
    from matplotlib.ticker import MaxNLocator

    plt = pyplot_agg()
    datasets = list(dict.fromkeys(c.dataset for c, _, _ in lines))
    colours = distinct_colours(dict.fromkeys(c.cell for c, _, _ in lines))
    fig, axes = _panels(plt, datasets)
    for ax, dataset in zip(axes, datasets, strict=True):
        for c, label, points in lines:
            if c.dataset == dataset:
                style = "o--" if c.epsilon is None else "o-"
                ax.plot(*zip(*points, strict=True), style, color=colours[c.cell], label=label)
        ax.set_xlabel("round (0 = before training)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(fig, ncol=1)
    _write(plt, fig, path)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Draw the figures of docs/results.md from benchmark JSON outputs. A plot "
        "whose input is not given (or not found) is skipped with a message on stderr; the "
        "paths written are printed; the exit status is 1 when nothing was written."
    )
    add = parser.add_argument
    add("--local-step", type=Path, metavar="PATH", help="bench/local_step.py --json output")
    add("--utility", type=Path, metavar="PATH", help="OUT/utility.json of bench/utility.py")
    add("--out", type=Path, metavar="DIR", default=REPO / "docs/img", help="default docs/img")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the plots whose inputs exist and print their paths."""
    args = parse_args(argv)
    step, utility = args.local_step, args.utility
    payload = _load(step) if step is not None and step.is_file() else {}
    cells = load_study(utility) if utility is not None and utility.is_file() else []
    plots: list[tuple[str, Path | None, Callable[[Path], bool], str]] = [
        ("throughput.png", step, lambda p: plot_throughput(payload, p), "measured row"),
        ("accuracy_vs_epsilon.png", utility, lambda p: plot_accuracy_vs_epsilon(cells, p),
         "finished cell"),
        ("accuracy_vs_round.png", utility, lambda p: plot_accuracy_vs_round(cells, p),
         "finished federated cell with a metrics.json"),
    ]  # fmt: skip
    written = []
    for name, source, draw, needs in plots:
        if source is None or not source.is_file():
            why = "no input given" if source is None else f"{source} not found"
            print(f"skipped {name}: {why}", file=sys.stderr)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        if draw(args.out / name):
            written.append(args.out / name)
        else:
            print(f"skipped {name}: no {needs} in {source}", file=sys.stderr)
    for path in written:
        print(path)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
