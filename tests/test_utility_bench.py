"""bench/utility.py builds the right ``fedlora`` command lines, data files and table rows.

No training: the cells' command lines are parsed by the ``fedlora`` parser itself, the
``--quick`` subsamples are built from tiny data sets shaped like the real ones.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from client.run_settings import SERVER_LR_UNDER_DP, SERVER_LR_WITHOUT_DP
from client.training_config import HeadRefitConfig
from sim.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _load_utility() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_utility", ROOT / "bench" / "utility.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


utility = _load_utility()


def _write(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Both data sets, small: BANKING77 with a train and a test file, medical with one file."""
    root = tmp_path / "data"
    intents = ("card_arrival", "lost_card", "top_up")
    train = [(f"query {i} about {intents[i % 3]}", intents[i % 3]) for i in range(1500)]
    test = [(f"test query {i}", intents[i % 3]) for i in range(600)]
    _write(root / "banking77" / "train.csv", ("text", "category"), train)
    _write(root / "banking77" / "test.csv", ("text", "category"), test)
    medical = [(f"abstract {i} " * 5, str(1 + i % 5)) for i in range(1500)]
    _write(
        root / "medical_abstracts" / "medical_tc_test.csv",
        ("condition_label", "medical_abstract"),
        [(label, text) for text, label in medical],
    )
    _write(
        root / "medical_abstracts" / "medical_tc_labels.csv",
        ("condition_label", "condition_name"),
        [(str(k), f"condition {k}") for k in range(1, 6)],
    )
    return root


def _parsed(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_full_study_commands_use_the_test_file_heads_and_plan(data_root: Path) -> None:
    plan = utility.FULL_PLAN
    banking = utility.DATASETS["banking77"]
    pool = utility.load_pool(banking, plan, data_root, data_root / "out")
    assert not pool.derived and pool.test_path == data_root / "banking77" / "test.csv"
    assert (pool.train_records, pool.test_records, pool.test_fraction) == (1500, 600, None)
    run_dir = Path("run")

    central = utility.cell_argv(
        utility.CELLS_BY_NAME["central-linear-dp3"], banking, plan, pool, 2, run_dir
    )
    args = _parsed(central)
    assert args.command == "train"
    assert Path(args.eval_data).resolve() == pool.test_path.resolve()
    assert "--eval-fraction" not in central
    assert (args.head, args.epsilon, args.clip_norm) == ("linear", 3.0, plan.clip_norm)
    assert (args.batch_size, args.lr, args.epochs) == (
        plan.central_batch_size,
        plan.learning_rate,
        plan.rounds * plan.local_epochs,
    )

    fed = utility.cell_argv(utility.CELLS_BY_NAME["fed-nodp"], banking, plan, pool, 0, run_dir)
    args = _parsed(fed)
    assert args.command == "sim" and args.no_dp and "--clip-norm" not in fed
    assert Path(args.test_data).resolve() == pool.test_path.resolve()
    assert "--test-fraction" not in fed
    assert (args.head, args.batch_size, args.rounds) == ("prototype", plan.node_batch_size, 3)
    assert plan.server_learning_rate is None and args.server_lr == SERVER_LR_WITHOUT_DP
    assert args.label_descriptions is None  # the plain prior: BANKING77's label names

    described = utility.CELLS_BY_NAME["central-desc-dp8"]
    args = _parsed(utility.cell_argv(described, banking, plan, pool, 0, run_dir))
    written = utility.REPO / "bench" / "label_descriptions" / "banking77.json"
    assert Path(args.label_descriptions).resolve() == written

    longer = _parsed(
        utility.cell_argv(utility.CELLS_BY_NAME["fed-dp8-x2"], banking, plan, pool, 0, run_dir)
    )
    assert (longer.rounds, longer.local_epochs, longer.batch_size) == (2 * plan.rounds, 1, 256)
    # the 9-round pair differs only in DP: the gap at 9 rounds
    nine = [
        _parsed(utility.cell_argv(utility.CELLS_BY_NAME[name], banking, plan, pool, 0, run_dir))
        for name in ("fed-nodp-x3", "fed-dp8-x3")
    ]
    assert [(a.rounds, a.batch_size, a.no_dp) for a in nine] == [
        (3 * plan.rounds, 256, True),
        (3 * plan.rounds, 256, False),
    ]
    longer = _parsed(
        utility.cell_argv(utility.CELLS_BY_NAME["central-dp8-x2"], banking, plan, pool, 0, run_dir)
    )
    assert (longer.epochs, longer.batch_size) == (2 * plan.central_epochs, plan.central_batch_size)
    longer_settings = utility.cell_settings(
        utility.CELLS_BY_NAME["fed-dp8-x2"], banking, plan, pool, 0
    )
    assert longer_settings["cell"]["epoch_factor"] == 2
    assert longer_settings["cell"]["node_batch_size"] == 256

    medical = utility.DATASETS["medical_abstracts"]
    assert described.runs_on(banking) and not described.runs_on(medical)
    # the written descriptions are a setting of the cells that use them only
    plain = utility.cell_settings(utility.CELLS_BY_NAME["central-dp8"], banking, plan, pool, 0)
    assert not {"descriptions", "epoch_factor", "node_batch_size"} & set(plain["cell"])
    assert "written_descriptions" not in plain["dataset"]
    with_text = utility.cell_settings(described, banking, plan, pool, 0)
    assert with_text["dataset"]["written_descriptions"] == banking.written_descriptions
    assert len(with_text["dataset"]["written_descriptions_sha256"]) == 64
    pool = utility.load_pool(medical, plan, data_root, data_root / "out")
    assert pool.test_path is None and pool.test_fraction == medical.test_fraction
    fed = utility.cell_argv(utility.CELLS_BY_NAME["fed-dp8"], medical, plan, pool, 0, run_dir)
    args = _parsed(fed)
    assert args.test_data is None and args.test_fraction == medical.test_fraction
    assert args.server_lr == SERVER_LR_UNDER_DP  # fedlora's default under DP, spelled out
    plain = utility.cell_argv(
        utility.CELLS_BY_NAME["fed-lora-dp8"], medical, plan, pool, 0, run_dir
    )
    assert _parsed(plain).server_lr == SERVER_LR_WITHOUT_DP  # plain LoRA's default under DP
    # its small Dirichlet nodes cannot all hold the plan's node batch: the cap applies,
    # and counts in the settings of its federated cells only
    assert args.batch_size == medical.max_node_batch_size < plan.node_batch_size
    fed_settings = utility.cell_settings(utility.CELLS_BY_NAME["fed-dp8"], medical, plan, pool, 0)
    assert fed_settings["dataset"]["max_node_batch_size"] == medical.max_node_batch_size
    central = utility.cell_settings(utility.CELLS_BY_NAME["central-dp8"], medical, plan, pool, 0)
    assert "max_node_batch_size" not in central["dataset"]
    assert f"batch size {plan.node_batch_size} (medical_abstracts: 32)" in utility.settings_text(
        plan, {"medical_abstracts": pool}
    )
    # the cost estimate prices the batch the command runs (capped), not the cell's own:
    # with records of many lengths a larger batch pads to a longer one
    varied = dataclasses.replace(pool, words=[1 + i % 90 for i in range(len(pool.words))])
    wide = utility.CELLS_BY_NAME["fed-dp8-x2"]
    capped = dataclasses.replace(wide, node_batch_size=medical.max_node_batch_size)
    uncapped = dataclasses.replace(medical, max_node_batch_size=None)
    estimate = utility.estimate_seconds(wide, medical, plan, varied)
    assert estimate == utility.estimate_seconds(capped, medical, plan, varied)
    assert estimate < utility.estimate_seconds(wide, uncapped, plan, varied)


def test_centralized_dp_cells_refit_the_head_unless_a_cell_says_not(data_root: Path) -> None:
    plan = utility.FULL_PLAN
    banking = utility.DATASETS["banking77"]
    pool = utility.load_pool(banking, plan, data_root, data_root / "out")

    def argv(name: str) -> argparse.Namespace:
        cell = utility.CELLS_BY_NAME[name]
        return _parsed(utility.cell_argv(cell, banking, plan, pool, 0, Path("run")))

    def settings(name: str) -> dict:  # type: ignore[type-arg]
        cell = utility.CELLS_BY_NAME[name]
        return utility.cell_settings(cell, banking, plan, pool, 0)["cell"]

    # the refitting cells run fedlora train's own default, as issue #7's command does
    assert argv("central-dp8").head_refit_steps == HeadRefitConfig().steps
    assert argv("central-dp8-norefit").head_refit_steps == 0
    assert argv("central-dp1-norefit").epsilon == 1.0
    assert settings("central-dp8")["head_refit"] is True  # results from before it: stale
    assert settings("central-dp8-norefit")["head_refit"] is False
    # where fedlora train does not refit, the field is no setting (those results stay)
    for name in ("central-nodp", "central-linear-dp8", "fed-dp8"):
        assert "head_refit" not in settings(name)
    assert utility.CELLS_BY_NAME["central-dp8-norefit"].describe().endswith(", no head refit")


def test_quick_subsamples_both_files_and_writes_them(data_root: Path) -> None:
    out = data_root / "out"
    plan = utility.QUICK_PLAN
    banking = utility.DATASETS["banking77"]
    pool = utility.load_pool(banking, plan, data_root, out)
    assert pool.derived
    assert pool.path == out / "data" / "banking77" / "quick-train.csv"
    assert pool.test_path == out / "data" / "banking77" / "quick-test.csv"
    assert abs(pool.records - (plan.quick_records - plan.quick_test)) <= 3
    assert abs(pool.test_records - plan.quick_test) <= 3
    utility.write_pool(pool, banking)
    with pool.test_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == pool.test_records and {r["category"] for r in rows} == {
        "card_arrival",
        "lost_card",
        "top_up",
    }
    assert all(r["text"].startswith("test query") for r in rows)
    argv = utility.cell_argv(utility.CELLS_BY_NAME["fed-dp8"], banking, plan, pool, 0, Path("r"))
    assert _parsed(argv).batch_size == plan.node_batch_size == 16


def test_a_changed_test_file_makes_results_stale(data_root: Path) -> None:
    banking = utility.DATASETS["banking77"]
    cell = utility.CELLS_BY_NAME["central-dp8"]
    before = utility.load_pool(banking, utility.FULL_PLAN, data_root, data_root / "out")
    test = data_root / "banking77" / "test.csv"
    test.write_text(test.read_text(encoding="utf-8") + "one more,top_up\n", encoding="utf-8")
    after = utility.load_pool(banking, utility.FULL_PLAN, data_root, data_root / "out")
    settings = utility.cell_settings(cell, banking, utility.FULL_PLAN, before, 0)
    assert not utility._same_settings(
        {"settings": settings},
        utility.cell_settings(cell, banking, utility.FULL_PLAN, after, 0),
    )


def test_rows_carry_the_cell_settings_and_accuracy_before_training() -> None:
    cell = utility.CELLS_BY_NAME["fed-linear-dp8"]
    assert cell.describe() == (
        "10 nodes, Dirichlet α=0.5, FFA-LoRA, DP ε=8, no prior (linear head)"
    )
    assert utility.CELLS_BY_NAME["central-dp8"].describe() == "centralized, FFA-LoRA, DP ε=8"
    results = [
        {
            "seed": seed,
            "accuracy": 0.5 + seed / 10,
            "macro_f1": 0.4,
            "initial_accuracy": 0.1 * (seed + 1),
            "wall_seconds": 10.0,
            "epsilon_max": 7.9,
            "epsilon_min": 7.8,
            "delta": 1e-5,
            "completed_rounds": 3,
            "planned_rounds": 3,
            "command": "fedlora sim ...",
        }
        for seed in (0, 1)
    ]
    row = utility._row("banking77", cell, results)
    assert row["initial_accuracy"] == pytest.approx(0.15)
    assert (row["target_epsilon"], row["head"], row["lora"]) == (8.0, "linear", "ffa")
    assert (row["federated"], row["partition"]) == (True, "dirichlet:0.5")
    central = utility._row("banking77", utility.CELLS_BY_NAME["central-nodp"], [])
    assert central["partition"] is None and central["initial_accuracy"] is None
    table = utility.format_table([row, central])
    header = table.splitlines()[0].split()
    assert header.index("before") == header.index("accuracy") - 1
    assert "0.150" in table.splitlines()[2]


def test_written_banking77_descriptions_cover_exactly_its_label_set() -> None:
    categories = utility.DEFAULT_DATA_ROOT / "banking77" / "categories.json"
    if not categories.is_file():
        pytest.skip(f"{categories} is absent outside the workplace layout")
    written = utility.REPO / "bench" / "label_descriptions" / "banking77.json"
    descriptions = json.loads(written.read_text(encoding="utf-8"))
    assert set(descriptions) == set(json.loads(categories.read_text(encoding="utf-8")))
    assert all(text.strip() for text in descriptions.values())

    # written from the label names: no sentence may be, or nearly be, a record of the data
    # (compared as lower-case words, so "My transfer failed." matches "my transfer failed")
    def words(text: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())

    records: set[str] = set()
    for name in ("train.csv", "test.csv"):
        with (categories.parent / name).open(encoding="utf-8", newline="") as handle:
            records |= {words(row["text"]) for row in csv.DictReader(handle)}
    near = {
        label: difflib.get_close_matches(words(text), records, n=1, cutoff=0.9)
        for label, text in descriptions.items()
    }
    assert not {label: match for label, match in near.items() if match}
