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

from privacy.durable_io import write_json_atomic, write_text_atomic
from sim.splits import stratified_split

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Trial:
    """One setting of ``fedlora train`` (DP-SGD at the sweep's ε)."""

    lr: float = 0.01
    batch_size: int = 256
    clip_norm: float = 1.0
    epochs: int = 3
    rank: int = 8
    target_modules: str = "query,value"
    head: str = "prototype"
    lora: str = "ffa"
    prototype_norm: float = 1.0

    def name(self) -> str:
        """A directory name that says every setting."""
        return (
            f"lr{self.lr:g}-b{self.batch_size}-c{self.clip_norm:g}-e{self.epochs}-r{self.rank}-"
            f"{self.target_modules.replace(',', '+')}-{self.head}-{self.lora}"
            + (f"-pn{self.prototype_norm:g}" if self.prototype_norm != 1.0 else "")
        )


BASE = Trial()
#: Values tried per axis, each with every other setting at ``BASE``.
AXES: dict[str, tuple[Any, ...]] = {
    "lr": (0.03, 0.003),
    "batch_size": (64, 1024),
    "clip_norm": (0.1,),
    "epochs": (6,),
    "rank": (4, 16),
    "target_modules": ("query,key,value", "query,key,value,dense"),
    "head": ("linear",),
    "lora": ("lora",),
    "prototype_norm": (10.0, 0.3),
}


def trials(axes: Sequence[str]) -> list[Trial]:
    """The base trial, then each value of each selected axis."""
    chosen = [BASE]
    for axis in axes:
        chosen += [dataclasses.replace(BASE, **{axis: value}) for value in AXES[axis]]
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
    """The ``fedlora train`` arguments of one trial."""
    spec = DATASETS[dataset]
    argv = ["train", "--data", str(data), "--text-column", spec.text_column]
    argv += ["--label-column", spec.label_column, "--eval-fraction", str(fraction)]
    if spec.labels:
        argv += ["--labels", ",".join(spec.labels)]
    if spec.label_descriptions and trial.head == "prototype":
        argv += ["--label-descriptions", str(data_root / spec.label_descriptions)]
    argv += ["--head", trial.head, "--lora", trial.lora, "--lora-rank", str(trial.rank)]
    if trial.head == "prototype":
        argv += ["--prototype-norm", f"{trial.prototype_norm:g}"]
    argv += ["--target-modules", trial.target_modules, "--epsilon", f"{epsilon:g}"]
    argv += ["--clip-norm", f"{trial.clip_norm:g}", "--epochs", str(trial.epochs)]
    argv += ["--batch-size", str(trial.batch_size), "--lr", f"{trial.lr:g}", "--bf16", "off"]
    return [*argv, "--seed", "0", "--out", str(run_dir), "--quiet"]


def run_trial(argv: list[str], folder: Path, trial: Trial, dataset: str) -> dict[str, Any]:
    """Run one trial and write its result atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    metrics = execute(argv, lambda message: print(f"    {message}", file=sys.stderr))
    result = {
        "dataset": dataset,
        "trial": dataclasses.asdict(trial),
        "command": "fedlora " + shlex.join(argv),
        "validation_accuracy": metrics["accuracy"],
        "validation_macro_f1": metrics["macro_f1"],
        "initial_accuracy": metrics["initial_accuracy"],
        "epsilon": metrics["epsilon"],
        "noise_multiplier": metrics["noise_multiplier"],
        "steps": metrics["steps"],
        "wall_seconds": time.perf_counter() - started,
    }
    write_json_atomic(folder / RESULT_FILE, result)
    return result


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of finished trials, best validation accuracy first per data set."""
    lines = [
        "| data set | lr | batch | clip | epochs | rank | targets | head | class-vector norm | "
        "LoRA | σ | ε | before | val. accuracy | val. macro-F1 | wall |",
        "|" + "---|" * 16,
    ]
    ordered = sorted(results, key=lambda r: (r["dataset"], -r["validation_accuracy"]))
    for r in ordered:
        t = r["trial"]
        lines.append(
            f"| {r['dataset']} | {t['lr']:g} | {t['batch_size']} | {t['clip_norm']:g} | "
            f"{t['epochs']} | {t['rank']} | {t['target_modules']} | {t['head']} | "
            f"{t.get('prototype_norm', 1.0):g} | {t['lora']} | "
            f"{r['noise_multiplier']:.3f} | {r['epsilon']:.3f} | {r['initial_accuracy']:.4f} | "
            f"{r['validation_accuracy']:.4f} | {r['validation_macro_f1']:.4f} | "
            f"{r['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One-at-a-time DP hyper-parameter sweep of `fedlora train` around a base "
        "setting, on a validation share of the training data (never the test split).",
        epilog=f"base: {BASE}\naxes: {AXES}\n\nexample:\n"
        "  python bench/sweep.py --datasets banking77 --axes lr target_modules",
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
    parser.add_argument("--list", action="store_true", help="print the trials and stop")
    args = parser.parse_args(argv)
    results = []
    for dataset in args.datasets:
        data = training_file(dataset, args.data_root, args.out)
        for trial in trials(args.axes):
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
    write_text_atomic(args.out / "sweep.md", table + "\n")
    write_json_atomic(
        args.out / "sweep.json", {"base": dataclasses.asdict(BASE), "trials": results}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
