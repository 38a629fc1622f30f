"""Partitioning schemes, the run config round trip and the round plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from client.round_plan import RoundPlan
from client.run_settings import (
    SERVER_LR_UNDER_DP,
    SERVER_LR_WITHOUT_DP,
    RunSettings,
    node_settings_from_config,
    settings_from_run_config,
)
from client.training_config import DPConfig
from sim.partitioning import PartitionScheme, partition_records
from sim.splits import stratified_split

LABELS = np.repeat(np.arange(5), 40)


def _covers_all(parts, n):  # type: ignore[no-untyped-def]
    allidx = np.sort(np.concatenate([p.indices for p in parts]))
    return np.array_equal(allidx, np.arange(n))


@pytest.mark.parametrize(
    ("scheme", "nodes"), [("iid", 4), ("dirichlet:0.5", 4), ("pathological:2", 4)]
)
def test_partitions_cover_every_record_once(scheme, nodes) -> None:  # type: ignore[no-untyped-def]
    parts = partition_records(LABELS, PartitionScheme.parse(scheme), nodes, seed=1)
    assert len(parts) == nodes and _covers_all(parts, len(LABELS))
    assert [p.name for p in parts] == ["node-0", "node-1", "node-2", "node-3"]


def test_pathological_limits_classes_per_node() -> None:
    parts = partition_records(LABELS, PartitionScheme.parse("pathological:2"), 4, seed=1)
    assert all(len(np.unique(LABELS[p.indices])) <= 2 for p in parts)


def test_dirichlet_is_skewed_and_seeded() -> None:
    a = partition_records(LABELS, PartitionScheme.parse("dirichlet:0.1"), 4, seed=3)
    b = partition_records(LABELS, PartitionScheme.parse("dirichlet:0.1"), 4, seed=3)
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True))
    shares = [np.bincount(LABELS[p.indices], minlength=5) / len(p.indices) for p in a]
    assert max(np.abs(s - 0.2).sum() for s in shares) > 0.5


def test_dirichlet_that_cannot_fill_every_node_says_why() -> None:
    # 200 records in 10 nodes average 20 each: no Dirichlet draw gives every node 60.
    with pytest.raises(
        ValueError,
        match=r"dirichlet:0.5 could not give each of 10 nodes at least 60 records \(one batch\) "
        r"from 200 records in 5 classes.*lower --batch-size",
    ):
        partition_records(LABELS, PartitionScheme.parse("dirichlet:0.5"), 10, seed=0, min_size=60)
    parts = partition_records(LABELS, PartitionScheme.parse("dirichlet:0.5"), 4, 0, min_size=20)
    assert min(len(p.indices) for p in parts) >= 20


def test_natural_partition_uses_column_values_and_checks_node_count() -> None:
    values = ["h1"] * 50 + ["h2"] * 100 + ["h3"] * 50
    parts = partition_records(LABELS, PartitionScheme.parse("natural:site"), None, 0, values)
    assert sorted(p.name for p in parts) == ["h1", "h2", "h3"]
    assert _covers_all(parts, len(LABELS))
    with pytest.raises(ValueError, match="--nodes 4 disagrees with natural:site, which has 3"):
        partition_records(LABELS, PartitionScheme.parse("natural:site"), 4, 0, values)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("random", "expected iid"),
        ("dirichlet:x", "positive number"),
        ("dirichlet:-1", "positive number"),
        ("pathological:0", "positive number"),
        ("natural:", "needs a column"),
        ("iid:3", "no argument"),
    ],
)
def test_bad_partition_flags(text, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        PartitionScheme.parse(text)


def test_stratified_split_keeps_every_class() -> None:
    train, held = stratified_split(LABELS, 0.2, seed=0)
    assert len(held) == 40 and len(train) == 160
    assert set(LABELS[held]) == set(range(5)) and not set(train) & set(held)


def test_run_config_round_trip_and_precise_errors() -> None:
    settings = RunSettings(rounds=4, labels=("a", "b", "c"), expected_nodes=5, nodes_per_round=3)
    assert settings_from_run_config(settings.to_run_config()) == settings
    changed = dataclasses.replace(
        settings,
        keep_optimizer_state=not settings.keep_optimizer_state,
        train=dataclasses.replace(settings.train, weight_average=0.9),
    )
    assert settings_from_run_config(changed.to_run_config()) == changed
    config = settings.to_run_config()
    with pytest.raises(ValueError, match="'lora-rank' must be int, got str"):
        settings_from_run_config({**config, "lora-rank": "eight"})
    with pytest.raises(ValueError, match="labels"):
        settings_from_run_config({**config, "labels": ""})
    with pytest.raises(ValueError, match="exceeds the expected nodes"):
        RunSettings(rounds=1, labels=("a", "b"), expected_nodes=2, nodes_per_round=3)


def test_node_config_for_deployed_and_simulated_nodes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = RunSettings(rounds=1, labels=("a", "b"))
    node = node_settings_from_config(
        {"data-path": "/data/ward.csv", "node-dir": str(tmp_path), "budget-epsilon": 2.5}, run
    )
    assert node.node_name == "ward" and node.budget_epsilon == 2.5
    with pytest.raises(ValueError, match="node-dir"):
        node_settings_from_config({"data-path": "/data/ward.csv"}, run)
    with pytest.raises(ValueError, match=r"'budget-epsilon' .* is required"):
        node_settings_from_config({"data-path": "/data/w.csv", "node-dir": str(tmp_path)}, run)
    with pytest.raises(ValueError, match="must set 'data-path'"):
        node_settings_from_config({}, run)


def test_round_plan_round_trip_and_validation() -> None:
    plan = RoundPlan(2, 5, 1, 32, 0.01, 1.0, 8.0, 0.0, "abc", "def")
    assert RoundPlan.from_config(plan.to_config()) == plan
    assert plan.remaining_rounds == 4
    with pytest.raises(ValueError, match="lacks 'clip-norm'"):
        RoundPlan.from_config({k: v for k, v in plan.to_config().items() if k != "clip-norm"})
    with pytest.raises(ValueError, match=r"outside 1\.\.5"):
        RoundPlan(6, 5, 1, 32, 0.01, 1.0, 8.0, 0.0, "abc", "def")


def test_pyproject_run_config_trains_with_the_dataclass_defaults() -> None:
    """`flwr run` (pyproject's run config) and `fedlora sim` / Python callers get one set of
    model, optimisation, DP and SecAgg+ defaults: those of the configuration dataclasses."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    parsed = settings_from_run_config({**config, "labels": "a,b,c"})
    defaults = RunSettings(rounds=parsed.rounds, labels=("a", "b", "c"))
    assert parsed.model == defaults.model
    assert parsed.train == defaults.train
    assert parsed.dp == defaults.dp
    assert parsed.secure_aggregation == defaults.secure_aggregation
    assert parsed.server_learning_rate == defaults.server_learning_rate
    assert parsed.keep_optimizer_state == defaults.keep_optimizer_state


def test_server_learning_rate_defaults_by_dp_and_adapter_and_survives_the_run_config() -> None:
    """Unset, the server step is the measured one for the run's DP setting and adapter
    variant (the larger step only for FFA-LoRA under DP); set, it is kept."""
    base = RunSettings(rounds=1, labels=("a", "b"))
    assert base.global_learning_rate == SERVER_LR_UNDER_DP
    no_dp = dataclasses.replace(base, dp=DPConfig(enabled=False))
    assert no_dp.global_learning_rate == SERVER_LR_WITHOUT_DP
    plain_lora = dataclasses.replace(base, model=dataclasses.replace(base.model, lora="lora"))
    assert plain_lora.dp.enabled and plain_lora.global_learning_rate == SERVER_LR_WITHOUT_DP
    chosen = dataclasses.replace(no_dp, server_learning_rate=2.0)
    assert chosen.global_learning_rate == 2.0
    for settings in (base, no_dp, plain_lora, chosen):
        assert settings_from_run_config(settings.to_run_config()) == settings
    with pytest.raises(ValueError, match="server_learning_rate must be > 0, got -1"):
        dataclasses.replace(base, server_learning_rate=-1.0)
