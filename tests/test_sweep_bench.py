"""bench/sweep.py: its trials are ``fedlora`` command lines on training data only.

No training: each trial's command line is parsed by the ``fedlora`` parser itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sim.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _load_sweep() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # sweep.py imports its sibling utility.py
    try:
        spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "bench" / "sweep.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


sweep = _load_sweep()


def _argv(trial, tmp_path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    data = tmp_path / "train.csv"
    return sweep.trial_argv(trial, "banking77", data, tmp_path, 8.0, 0.1, tmp_path / "run")


def test_central_trial_validates_on_a_share_of_the_training_file(tmp_path: Path) -> None:
    trial = dataclasses.replace(sweep.BASE, encoder_dropout=0.0, lr_schedule="linear")
    argv = _argv(trial, tmp_path)
    args = build_parser().parse_args(argv)
    assert args.command == "train" and args.eval_fraction == 0.1 and args.eval_data is None
    assert Path(args.data) == tmp_path / "train.csv"
    assert (args.epochs, args.batch_size, args.lr) == (trial.epochs, trial.batch_size, trial.lr)
    assert (args.encoder_dropout, args.lr_schedule, args.epsilon) == (0.0, "linear", 8.0)
    assert (args.lora_rank, args.lora_alpha) == (trial.rank, trial.alpha)


def test_federated_trial_runs_sim_for_epochs_rounds_with_a_server_held_share(
    tmp_path: Path,
) -> None:
    trial = dataclasses.replace(sweep.FEDERATED_BASE, server_lr=3.0)
    args = build_parser().parse_args(_argv(trial, tmp_path))
    assert args.command == "sim" and args.test_fraction == 0.1 and args.test_data is None
    assert args.keep_optimizer_state is False
    keeping = dataclasses.replace(trial, keep_optimizer_state=True)
    assert build_parser().parse_args(_argv(keeping, tmp_path)).keep_optimizer_state is True
    assert (args.nodes, args.nodes_per_round, args.partition) == (10, 10, "dirichlet:0.5")
    assert (args.rounds, args.local_epochs, args.server_lr) == (trial.epochs, 1, 3.0)
    assert args.batch_size == sweep.FEDERATED_BASE.batch_size


def test_trials_vary_one_axis_and_keep_federated_axes_federated() -> None:
    central = sweep.trials(["server_lr", "batch_size"])
    assert central[0] == sweep.BASE and all(not t.federated for t in central)
    assert {t.server_lr for t in central} == {1.0}  # a central trial has no server
    federated = sweep.trials(["batch_size", "server_lr"], sweep.FEDERATED_BASE)
    assert federated[0] == sweep.FEDERATED_BASE
    assert [t.batch_size for t in federated[1:3]] == list(sweep.FEDERATED_AXIS_VALUES["batch_size"])
    names = [t.name() for t in central + federated]
    assert len(set(names)) == len(names)  # every trial has its own result folder


def test_federated_scores_take_the_final_round_and_the_largest_node_epsilon() -> None:
    metrics = {
        "initial": {"accuracy": 0.6},
        "final": {"accuracy": 0.8, "macro_f1": 0.7, "epsilon": {"a": 7.5, "b": 8.0}},
    }
    scores = sweep._federated_scores(metrics)
    assert (scores["validation_accuracy"], scores["initial_accuracy"]) == (0.8, 0.6)
    assert scores["epsilon"] == 8.0 and scores["noise_multiplier"] is None


def test_base_overrides_are_typed_and_bad_ones_are_named() -> None:
    base = sweep.parse_base(["server_lr=3", "batch_size=128"], sweep.FEDERATED_BASE)
    assert (base.server_lr, base.batch_size, base.federated) == (3.0, 128, True)
    assert [t.batch_size for t in sweep.trials(["batch_size"], base)] == [128, 256]
    with pytest.raises(ValueError, match="'batch_size=big': 'big' is not a int"):
        sweep.parse_base(["batch_size=big"], sweep.BASE)
    assert sweep.parse_base(["keep_optimizer_state=false"], base).keep_optimizer_state is False
    assert sweep.parse_base(["keep_optimizer_state=True"], base).keep_optimizer_state is True
    with pytest.raises(ValueError, match="'keep_optimizer_state=1': '1' is not a bool"):
        sweep.parse_base(["keep_optimizer_state=1"], base)
    with pytest.raises(ValueError, match="'warmup=3': expected axis=value"):
        sweep.parse_base(["warmup=3"], sweep.BASE)


def test_central_trials_refit_the_head_as_fedlora_train_does_and_federated_ones_cannot(
    tmp_path: Path,
) -> None:
    args = build_parser().parse_args(_argv(sweep.BASE, tmp_path))
    assert (args.head_refit_steps, args.head_refit_noise_ratio) == (10, 1.0)
    assert sweep.BASE.name().endswith("-hr10")
    off = dataclasses.replace(sweep.BASE, head_refit_steps=0)
    assert build_parser().parse_args(_argv(off, tmp_path)).head_refit_steps == 0
    assert "-hr" not in off.name()  # the name every trial from before the refit carries
    fed = build_parser().parse_args(_argv(sweep.FEDERATED_BASE, tmp_path))
    assert fed.command == "sim" and not hasattr(fed, "head_refit_steps")
    with pytest.raises(ValueError, match="do not refit"):
        _argv(dataclasses.replace(sweep.FEDERATED_BASE, head_refit_steps=10), tmp_path)
    ratios = [t.head_refit_noise_ratio for t in sweep.trials(["head_refit_noise_ratio"])]
    assert ratios == [1.0, 0.7, 1.5]


def test_a_result_from_before_the_refit_reads_as_no_refit() -> None:
    old = {
        "dataset": "banking77",
        "trial": {k: v for k, v in dataclasses.asdict(sweep.BASE).items() if "refit" not in k},
        "noise_multiplier": 0.587,
        "epsilon": 7.9991,
        "initial_accuracy": 0.6249,
        "validation_accuracy": 0.8766,
        "validation_macro_f1": 0.8732,
        "wall_seconds": 366.0,
    }
    new = {**old, "trial": dataclasses.asdict(sweep.BASE), "validation_accuracy": 0.8915}
    rows = sweep.format_table([old, new]).splitlines()[2:]
    assert "| 10 steps, ρ 1 |" in rows[0] and "| 0.8915 |" in rows[0]
    assert "| no |" in rows[1] and "| 0.8766 |" in rows[1]
