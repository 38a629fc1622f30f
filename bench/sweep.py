"""The DP hyper-parameter sweep behind fedlora's defaults (issue #7), on validation data only.

Why it exists: the defaults a user gets (learning rate, batch size, clip norm, epochs, LoRA
rank and target modules, head) should be chosen by measurement, and never on the test split
that docs/results.md reports. Every trial here is one ``fedlora train`` command on the data
set's *training* file, holding out a seeded stratified validation share of it
(``--eval-fraction``, default 0.1, seed 0): BANKING77 trains on 90% of ``train.csv`` and
validates on the other 10%; its ``test.csv`` is never read. For medical_abstracts, whose
only file is also its test pool, the sweep validates on a share of the 80% that
``bench/utility.py`` trains on (the same seeded split), so its 20% test records stay unseen.

The sweep is one-at-a-time around a base setting: the base trial, then each axis value with
all other settings at the base (``--axes`` picks the axes). It is resumable: a trial whose
``OUT/<data set>/<trial>/result.json`` exists is skipped. The table (stdout, ``OUT/sweep.md``
and ``OUT/sweep.json``) lists validation accuracy, macro-F1, the zero-shot accuracy before
training, the ε spent and the wall time of every finished trial.

Usage: ``python bench/sweep.py [--datasets ...] [--axes ...] [--epsilon 8] [--list]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utility import DATASETS, DEFAULT_DATA_ROOT, execute, read_result

from privacy.accounting import format_epsilon
from privacy.durable_io import write_json_atomic, write_text_atomic
from sim.splits import stratified_split

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Trial:
    """One setting of ``fedlora train`` or, when ``federated``, of ``fedlora sim`` (DP-SGD
    at the sweep's ε). A federated trial runs :data:`FEDERATION` for ``epochs`` rounds of
    one local epoch each, with ``batch_size`` as each node's expected batch."""

    lr: float = 0.01
    batch_size: int = 256
    clip_norm: float = 1.0
    epochs: int = 3
    rank: int = 8
    alpha: int = 16
    target_modules: str = "query,value"
    head: str = "prototype"
    lora: str = "ffa"
    prototype_norm: float = 1.0
    encoder_dropout: float = 0.1
    lr_schedule: str = "constant"
    weight_average: float = 0.0
    federated: bool = False
    server_lr: float = 1.0
    keep_optimizer_state: bool = False
    adapter_clip_share: float = 0.0  # 0: flat clipping (fedlora's default)
    # fedlora train's default; 0 (off) for the federation, whose nodes do not refit, and for
    # every result from before the refit existed (their names carry no "-hr")
    head_refit_steps: int = 10
    head_refit_noise_ratio: float = 1.0

    def name(self) -> str:
        """A directory name that says every setting."""
        return (
            ("fed-" if self.federated else "")
            + f"lr{self.lr:g}-b{self.batch_size}-c{self.clip_norm:g}-e{self.epochs}-r{self.rank}-"
            f"{self.target_modules.replace(',', '+')}-{self.head}-{self.lora}"
            + (f"-pn{self.prototype_norm:g}" if self.prototype_norm != 1.0 else "")
            + (f"-do{self.encoder_dropout:g}" if self.encoder_dropout != 0.1 else "")
            + (f"-slr{self.server_lr:g}" if self.server_lr != 1.0 else "")
            + (f"-a{self.alpha}" if self.alpha != 16 else "")
            + (f"-{self.lr_schedule}" if self.lr_schedule != "constant" else "")
            + (f"-wa{self.weight_average:g}" if self.weight_average else "")
            + ("-keepopt" if self.keep_optimizer_state else "")
            + (f"-acs{self.adapter_clip_share:g}" if self.adapter_clip_share else "")
            + (f"-hr{self.head_refit_steps}" if self.head_refit_steps else "")
            + (f"-rho{self.head_refit_noise_ratio:g}" if self.head_refit_noise_ratio != 1 else "")
        )


BASE = Trial()
#: The federated base: 10 nodes of about 900 records, so a node's batch is smaller.
FEDERATED_BASE = Trial(federated=True, batch_size=64, head_refit_steps=0)
#: How a result from before the head refit existed reads: its trial has no refit field.
BEFORE_HEAD_REFIT = {"head_refit_steps": 0}
#: The federation of a federated trial (``fedlora sim`` flags): issue #7's target setting.
FEDERATION = ["--nodes", "10", "--nodes-per-round", "10", "--partition", "dirichlet:0.5"]
#: Values tried per axis, each with every other setting at the base.
AXES: dict[str, tuple[Any, ...]] = {
    "lr": (0.03, 0.003),
    "batch_size": (64, 1024),
    "clip_norm": (0.1, 3.0),
    "epochs": (6,),
    "rank": (4, 16),
    "alpha": (8, 32),
    "target_modules": ("query,key,value", "query,key,value,dense"),
    "head": ("linear",),
    "lora": ("lora",),
    "prototype_norm": (10.0, 0.3),
    "encoder_dropout": (0.0,),
    "server_lr": (3.0, 10.0),
    "keep_optimizer_state": (True,),
    "lr_schedule": ("linear",),
    "weight_average": (0.9, 0.97),
    "adapter_clip_share": (0.25, 0.5),
    "head_refit_steps": (0, 30),
    "head_refit_noise_ratio": (0.7, 1.5),
}
#: Axes that only a federated trial has.
FEDERATED_AXES = ("server_lr", "keep_optimizer_state")
#: Axes that only a centralized trial has (``fedlora train`` options ``fedlora sim`` lacks).
CENTRAL_AXES = ("adapter_clip_share", "head_refit_steps", "head_refit_noise_ratio")
#: A federated trial's values where they differ from ``AXES`` (a node holds ~900 records).
FEDERATED_AXIS_VALUES: dict[str, tuple[Any, ...]] = {
    "batch_size": (128, 256),
    "lr": (0.02, 0.03),
    "server_lr": (3.0, 5.0, 10.0),
}


def _parse_value(kind: type, text: str) -> Any:
    """``text`` as a value of type ``kind`` (a bool is true/false)."""
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    return kind(text)


def parse_base(pairs: Sequence[str], base: Trial) -> Trial:
    """``base`` with ``axis=value`` overrides (``--base``), each value of its axis' type.

    Raises
    ------
    ValueError
        Naming a pair without ``=``, an unknown axis or a value of the wrong type.
    """
    fields = {field.name: type(getattr(base, field.name)) for field in dataclasses.fields(Trial)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        axis, sep, text = pair.partition("=")
        if not sep or axis not in fields or axis == "federated":
            raise ValueError(f"--base {pair!r}: expected axis=value with an axis of {list(AXES)}")
        try:
            changes[axis] = _parse_value(fields[axis], text)
        except ValueError:
            raise ValueError(
                f"--base {pair!r}: {text!r} is not a {fields[axis].__name__}"
            ) from None
    return dataclasses.replace(base, **changes)


def trials(axes: Sequence[str], base: Trial = BASE) -> list[Trial]:
    """The base trial, then each value of each selected axis (a federated-only axis is
    skipped in a centralized sweep, a centralized-only one in a federated sweep; a value
    equal to the base's is not repeated)."""
    federated = base.federated
    chosen = [base]
    for axis in axes:
        if (axis in FEDERATED_AXES and not federated) or (axis in CENTRAL_AXES and federated):
            continue
        values = FEDERATED_AXIS_VALUES.get(axis, AXES[axis]) if federated else AXES[axis]
        chosen += [
            dataclasses.replace(base, **{axis: value})
            for value in values
            if value != getattr(base, axis)
        ]
    return chosen


def training_file(dataset: str, data_root: Path, out: Path) -> Path:
    """The file the sweep trains and validates on: never rows of a reported test split."""
    spec = DATASETS[dataset]
    source = data_root / spec.source
    if spec.test_source is not None:  # a separate test file exists: train.csv is free
        return source
    # the study holds out a seeded 20% of this file as its test split: keep only the rest
    with source.open(encoding="utf-8", newline="") as handle:
        rows = [(r[spec.text_column], r[spec.label_column]) for r in csv.DictReader(handle)]
    labels = spec.labels or tuple(sorted({label for _, label in rows}))
    index = {label: i for i, label in enumerate(labels)}
    assert spec.test_fraction is not None  # a data set has a test file or a test fraction
    train, _ = stratified_split([index[label] for _, label in rows], spec.test_fraction, 0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([spec.text_column, spec.label_column])
    writer.writerows(rows[i] for i in train)
    path = out / "data" / f"{dataset}-train-part.csv"
    if not path.is_file() or path.read_text(encoding="utf-8") != buffer.getvalue():
        write_text_atomic(path, buffer.getvalue())
    return path


def trial_argv(
    trial: Trial,
    dataset: str,
    data: Path,
    data_root: Path,
    epsilon: float,
    fraction: float,
    run_dir: Path,
) -> list[str]:
    """The ``fedlora train`` (or ``fedlora sim``) arguments of one trial."""
    spec = DATASETS[dataset]
    if trial.federated:
        argv = ["sim", "--data", str(data), "--test-fraction", str(fraction), *FEDERATION]
        argv += ["--rounds", str(trial.epochs), "--local-epochs", "1"]
        argv += ["--server-lr", f"{trial.server_lr:g}"]
        if trial.keep_optimizer_state:
            argv += ["--keep-optimizer-state"]
    else:
        argv = ["train", "--data", str(data), "--eval-fraction", str(fraction)]
        argv += ["--epochs", str(trial.epochs)]
    argv += ["--text-column", spec.text_column, "--label-column", spec.label_column]
    if spec.labels:
        argv += ["--labels", ",".join(spec.labels)]
    if spec.label_descriptions and trial.head == "prototype":
        argv += ["--label-descriptions", str(data_root / spec.label_descriptions)]
    argv += ["--head", trial.head, "--lora", trial.lora, "--lora-rank", str(trial.rank)]
    argv += ["--lora-alpha", str(trial.alpha)]
    if trial.head == "prototype":
        argv += ["--prototype-norm", f"{trial.prototype_norm:g}"]
    argv += ["--target-modules", trial.target_modules, "--epsilon", f"{epsilon:g}"]
    argv += ["--clip-norm", f"{trial.clip_norm:g}"]
    argv += ["--encoder-dropout", f"{trial.encoder_dropout:g}", "--lr-schedule", trial.lr_schedule]
    argv += ["--weight-average", f"{trial.weight_average:g}"]
    if trial.adapter_clip_share:
        if trial.federated:
            raise ValueError("adapter_clip_share: fedlora sim has no --adapter-clip-share")
        argv += ["--adapter-clip-share", f"{trial.adapter_clip_share:g}"]
    if trial.federated and trial.head_refit_steps:
        raise ValueError("head_refit_steps: fedlora sim's nodes do not refit the head")
    if not trial.federated:
        argv += ["--head-refit-steps", str(trial.head_refit_steps)]
        argv += ["--head-refit-noise-ratio", f"{trial.head_refit_noise_ratio:g}"]
    argv += ["--batch-size", str(trial.batch_size), "--lr", f"{trial.lr:g}", "--bf16", "off"]
    argv += ["--seed", "0", "--out", str(run_dir)]
    return argv if trial.federated else [*argv, "--quiet"]


def _central_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation scores, σ and ε from ``fedlora train``'s ``metrics.json``."""
    return {
        "validation_accuracy": metrics["accuracy"],
        "validation_macro_f1": metrics["macro_f1"],
        "initial_accuracy": metrics["initial_accuracy"],
        "epsilon": metrics["epsilon"],
        "noise_multiplier": metrics["noise_multiplier"],
        "steps": metrics["steps"],
    }


def _federated_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation scores of the final global model and the largest ε any node spent (from
    its ledger) from ``fedlora sim``'s outputs; σ and steps differ per node, so none."""
    final = metrics["final"]
    epsilons = [float(e) for e in (final.get("epsilon") or {}).values() if e is not None]
    return {
        "validation_accuracy": final["accuracy"],
        "validation_macro_f1": final["macro_f1"],
        "initial_accuracy": metrics["initial"]["accuracy"],
        "epsilon": max(epsilons) if epsilons else None,
        "noise_multiplier": None,
        "steps": None,
    }


def run_trial(argv: list[str], folder: Path, trial: Trial, dataset: str) -> dict[str, Any]:
    """Run one trial and write its result atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    metrics = execute(argv, lambda message: print(f"    {message}", file=sys.stderr))
    result = {
        "dataset": dataset,
        "trial": dataclasses.asdict(trial),
        "command": "fedlora " + shlex.join(argv),
        **(_federated_scores(metrics) if trial.federated else _central_scores(metrics)),
        "wall_seconds": time.perf_counter() - started,
    }
    write_json_atomic(folder / RESULT_FILE, result)
    return result


def _optional(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _refit_text(trial: dict[str, Any]) -> str:
    if not trial["head_refit_steps"]:
        return "no"
    return f"{trial['head_refit_steps']} steps, ρ {trial['head_refit_noise_ratio']:g}"


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of finished trials, best validation accuracy first per data set (σ
    differs per node in a federated trial, whose ε is the largest any node spent)."""
    lines = [
        "| data set | mode | lr | batch | clip | epochs | rank | α | targets | head | "
        "class-vector norm | LoRA | encoder dropout | lr schedule | weight average | server lr | "
        "keeps Adam | adapter clip share | head refit | σ | ε | "
        "before | val. accuracy | val. macro-F1 | wall |",
        "|" + "---|" * 25,
    ]
    ordered = sorted(results, key=lambda r: (r["dataset"], -r["validation_accuracy"]))
    for r in ordered:
        t = {**dataclasses.asdict(BASE), **BEFORE_HEAD_REFIT, **r["trial"]}  # older lack axes
        lines.append(
            f"| {r['dataset']} | {'federated' if t['federated'] else 'central'} | "
            f"{t['lr']:g} | {t['batch_size']} | {t['clip_norm']:g} | "
            f"{t['epochs']} | {t['rank']} | {t['alpha']} | {t['target_modules']} | {t['head']} | "
            f"{t['prototype_norm']:g} | {t['lora']} | {t['encoder_dropout']:g} | "
            f"{t['lr_schedule']} | {t['weight_average']:g} | "
            f"{t['server_lr']:g} | {'yes' if t['keep_optimizer_state'] else 'no'} | "
            f"{t['adapter_clip_share'] or 'flat'} | "
            f"{_refit_text(t)} | "
            f"{_optional(r['noise_multiplier'], '.3f')} | "
            f"{'–' if r['epsilon'] is None else format_epsilon(r['epsilon'], 3)} | "
            f"{r['initial_accuracy']:.4f} | "
            f"{r['validation_accuracy']:.4f} | {r['validation_macro_f1']:.4f} | "
            f"{r['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def finished_results(out: Path, datasets: Sequence[str]) -> list[dict[str, Any]]:
    """Every finished trial's result under ``out`` for ``datasets``, whatever its base."""
    found = (
        read_result(path) for d in datasets for path in sorted(out.glob(f"{d}/*/*/{RESULT_FILE}"))
    )
    return [result for result in found if result is not None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One-at-a-time DP hyper-parameter sweep of `fedlora train` (or, with "
        "--federated, `fedlora sim`) around a base setting, on a validation share of the "
        "training data (never the test split).",
        epilog=f"base: {BASE}\nfederated base: {FEDERATED_BASE}, {' '.join(FEDERATION)}\n"
        f"axes: {AXES}\n\nexamples:\n"
        "  python bench/sweep.py --datasets banking77 --axes lr target_modules\n"
        "  python bench/sweep.py --federated --axes batch_size server_lr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--datasets", nargs="+", default=["banking77"], choices=DATASETS)
    parser.add_argument(
        "--axes", nargs="*", default=list(AXES), choices=AXES, help="axes to vary (default all)"
    )
    parser.add_argument("--epsilon", type=float, default=8.0, help="target ε of every trial")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument(
        "--federated",
        action="store_true",
        help="sweep `fedlora sim` (10 nodes, Dirichlet α=0.5, one local epoch per round); "
        "the server holds out the validation share",
    )
    parser.add_argument(
        "--base",
        nargs="*",
        default=[],
        metavar="AXIS=VALUE",
        help="sweep around a changed base, e.g. --base server_lr=3 batch_size=128",
    )
    parser.add_argument("--list", action="store_true", help="print the trials and stop")
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the table of every finished trial under --out (all axes and bases) and stop",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(format_table(finished_results(args.out, args.datasets)))
        return 0
    try:
        base = parse_base(args.base, FEDERATED_BASE if args.federated else BASE)
    except ValueError as error:
        parser.error(str(error))
    results = []
    for dataset in args.datasets:
        data = training_file(dataset, args.data_root, args.out)
        for trial in trials(args.axes, base):
            folder = args.out / dataset / f"eps{args.epsilon:g}" / trial.name()
            call = trial_argv(
                trial,
                dataset,
                data,
                args.data_root,
                args.epsilon,
                args.validation_fraction,
                folder / "run",
            )
            result = read_result(folder / RESULT_FILE)
            if args.list:
                print(f"{'done' if result else 'todo'}  fedlora {shlex.join(call)}")
                continue
            if result is None:
                print(f"  running {dataset} {trial.name()}", file=sys.stderr, flush=True)
                result = run_trial(call, folder, trial, dataset)
            results.append(result)
    if args.list:
        return 0
    table = format_table(results)
    print(table)
    stem = "sweep-federated" if args.federated else "sweep"
    write_text_atomic(args.out / f"{stem}.md", table + "\n")
    write_json_atomic(
        args.out / f"{stem}.json", {"base": dataclasses.asdict(base), "trials": results}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
