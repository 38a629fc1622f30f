"""End-to-end federated simulations through Flower's Ray runtime (tiny model, a few nodes)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from client.adapter_io import load_adapter
from client.dp_training import DPConfig, TrainConfig
from client.model import ModelConfig, adapter_state, build_model
from client.run_settings import RunSettings
from client.synthetic import SyntheticConfig
from privacy.ledger import read_ledger
from privacy.mask_generator import MASK_GENERATOR
from sim.partitioning import PartitionScheme
from sim.simulation import SimConfig, launch_simulation, prepare_simulation

SMALL_DATA = SyntheticConfig(
    domains=("bank",), institutions_per_domain=3, examples_per_institution=300, seed=1
)


def _config(out: Path, rounds: int = 2, **settings_changes) -> SimConfig:  # type: ignore[no-untyped-def]
    settings = RunSettings(
        rounds=rounds,
        model=ModelConfig(model="tiny", max_length=48),
        train=TrainConfig(epochs=1, batch_size=32, learning_rate=2e-2, noise_seed=None),
        dp=DPConfig(target_epsilon=8.0, clip_norm=1.0),
        send_train_loss=True,
    )
    settings = dataclasses.replace(settings, **settings_changes)
    return SimConfig(
        out=out,
        settings=settings,
        partition=PartitionScheme.parse("natural:institution"),
        synthetic=SMALL_DATA,
        test_fraction=0.2,
    )


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("sim")
    before = _children()
    logs: list[str] = []
    # the real all-MiniLM-L6-v2: a random tiny encoder cannot show learning under DP in 2 rounds
    # nodes keep their Adam state across rounds here; the other simulations start each round
    # with a fresh Adam (the default)
    config = _config(out, model=ModelConfig(max_length=64), keep_optimizer_state=True)
    prepared = prepare_simulation(config, log=logs.append)
    record = launch_simulation(prepared, log=logs.append)
    return out, prepared, record, logs, before


def test_simulation_trains_and_accounts(finished_run) -> None:  # type: ignore[no-untyped-def]
    out, prepared, record, logs, _ = finished_run
    assert prepared.node_names == ("bank_a", "bank_b", "bank_c")
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert all(r["completed"] for r in record["rounds"])
    assert record["final"]["accuracy"] > record["initial"]["accuracy"]
    assert any(line.startswith("round 2/2 | accuracy") for line in logs)

    # the global adapter changed, and only adapter tensors were saved
    settings = prepared.settings
    fresh = adapter_state(build_model(settings.model, settings.labels), trainable_only=True)
    final = load_adapter(out / "adapter")
    assert set(fresh) <= set(final.state)
    assert any(not np.allclose(final.state[n], fresh[n]) for n in fresh)

    # each node's ε is within its budget and equals what its ledger says
    for name in prepared.node_names:
        entries = read_ledger(out / "ledgers" / f"{name}.jsonl")
        assert [e.round for e in entries] == [1, 2]
        # one σ per run, so the run merges into one accounting event
        assert len({(e.noise_multiplier, e.sample_rate) for e in entries}) == 1
        reported = record["final"]["epsilon"][name]
        assert reported == pytest.approx(entries[-1].epsilon, rel=1e-12)
        assert reported <= 8.0
        node_rounds = [r["nodes"][name] for r in record["rounds"]]
        assert all(n["participated"] for n in node_rounds)
        payload = sum(v.nbytes for v in fresh.values())
        masked = 8 * (1 + payload // 4)  # SecAgg+ sends int64 ring elements (+ a weight)
        assert all(n["bytes_received"] == payload for n in node_rounds)
        assert all(n["bytes_sent"] == masked for n in node_rounds)
        # round 2 started from the node's round-1 Adam, kept in its Flower context via Ray
        first, second = node_rounds
        assert first["optimizer_steps_carried"] == 0
        assert second["optimizer_steps_carried"] == first["steps"] > 0
    secure = json.loads((out / "metrics.json").read_text())["config"]["secure_aggregation"]
    assert secure["enabled"] and secure["mask_generator"] == MASK_GENERATOR
    assert (secure["shares"], secure["threshold"]) == (3, 2)
    for png in ("accuracy.png", "epsilon.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text())["final"] == record["final"]


def test_no_process_left_behind(finished_run) -> None:  # type: ignore[no-untyped-def]
    *_, before = finished_run
    leftover = _children() - before
    assert not leftover, f"processes left behind: {leftover}"


def test_wrong_data_path_is_reported_not_hung(tmp_path) -> None:  # type: ignore[no-untyped-def]
    logs: list[str] = []
    prepared = prepare_simulation(_config(tmp_path, rounds=1), log=logs.append)
    (tmp_path / "partitions" / "bank_b.csv").unlink()
    record = launch_simulation(prepared, log=logs.append)
    (entry,) = record["rounds"]
    assert entry["completed"]  # the two healthy nodes still trained
    assert entry["nodes"]["bank_b"]["participated"] is False
    assert "bank_b.csv" in entry["nodes"]["bank_b"]["error"]
    assert (
        "not found" in entry["nodes"]["bank_b"]["error"].lower()
        or "no such" in entry["nodes"]["bank_b"]["error"].lower()
    )
    assert any("bank_b failed" in line for line in logs)


def _wait_for_round(out: Path, number: int, proc: subprocess.Popen, timeout: float) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    config = out / "checkpoint" / "adapter_config.json"
    while time.monotonic() < deadline:
        if config.exists() and json.loads(config.read_text())["extra"]["round"] >= number:
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
    raise AssertionError(f"round {number} did not finish in {timeout}s")


def test_interrupt_then_resume_counts_no_round_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    command = [
        sys.executable,
        "-m",
        "sim.cli",
        "sim",
        "--model",
        "tiny",
        "--max-length",
        "48",
        "--rounds",
        "3",
        "--batch-size",
        "32",
        "--lr",
        "0.02",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_round(tmp_path, 1, proc, timeout=300)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user would
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, output
    assert "interrupted" in output
    survivors = _group_survivors(proc.pid, wait=15.0)
    # Known race (see closing note): when the group's SIGINT kills Ray's raylet first, Ray's
    # two agent processes can outlive it. Anything else left behind is a failure.
    unexpected = [s for s in survivors if "DashboardAgent" not in s and "RuntimeEnvAgent" not in s]
    for line in survivors:
        with contextlib.suppress(psutil.Error):
            psutil.Process(int(line.split()[0])).kill()
    assert not unexpected, f"processes left behind after Ctrl-C: {unexpected}"
    interrupted = json.loads((tmp_path / "metrics.json").read_text())
    done = [r["round"] for r in interrupted["rounds"] if r["completed"]]
    assert done and done[-1] < 3

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming after round {done[-1]}" in resumed.stdout
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2, 3]
    assert all(r["completed"] for r in record["rounds"]), record["rounds"]
    assert record["final"]["completed_rounds"] == 3
    for ledger in (tmp_path / "ledgers").glob("*.jsonl"):
        rounds = [e.round for e in read_ledger(ledger)]
        # a round interrupted after its spend was recorded stays charged (conservative)
        assert rounds == sorted(rounds) and rounds[-1] == 3, (ledger.name, rounds)


def _group_survivors(group: int, wait: float = 10.0) -> list[str]:
    """Live (non-zombie) processes of a process group, after giving them ``wait`` s to exit."""
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for process in psutil.process_iter(["pid", "status", "cmdline"]):
            try:
                if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:80]}")
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_runs_accumulate_and_a_spent_node_declines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledgers = tmp_path / "ledgers"
    # 4 institutions: after one declines, 3 remain, the fewest secure aggregation accepts
    four = dataclasses.replace(SMALL_DATA, institutions_per_domain=4)
    first = dataclasses.replace(
        _config(tmp_path / "run1", rounds=1), ledger_dir=ledgers, synthetic=four
    )
    launch_simulation(prepare_simulation(first, log=lambda _: None), log=lambda _: None)
    after_first = {n: read_ledger(ledgers / f"{n}.jsonl")[-1].epsilon for n in ("bank_a", "bank_c")}
    assert all(7.9 < eps <= 8.0 for eps in after_first.values())

    # run 2: the nodes' operators raised their budgets to 16, except bank_c (still 8)
    second = dataclasses.replace(
        _config(tmp_path / "run2", rounds=2, dp=DPConfig(target_epsilon=16.0)),
        ledger_dir=ledgers,
        node_budgets=(("bank_c", 8.0),),
        synthetic=four,
    )
    logs: list[str] = []
    record = launch_simulation(prepare_simulation(second, log=logs.append), log=logs.append)
    assert all(r["completed"] for r in record["rounds"])  # the others go on
    assert record["stopped_nodes"]["bank_c"]["round"] == 1
    assert any("bank_c declined" in line for line in logs)
    assert record["rounds"][1]["nodes"]["bank_c"] == {
        "participated": False,
        "stopped": True,
        "bytes_sent": 0,
        "bytes_received": 0,
    }
    bank_a = read_ledger(ledgers / "bank_a.jsonl")
    assert len({e.run_id for e in bank_a}) == 2 and len(bank_a) == 3
    assert bank_a[1].epsilon > after_first["bank_a"]  # run 2 starts where run 1 ended
    assert 15.9 < bank_a[-1].epsilon <= 16.0
    assert len(read_ledger(ledgers / "bank_c.jsonl")) == 1  # nothing charged for declining
    report = json.loads((tmp_path / "run2" / "audit" / "report.json").read_text())
    assert {n["node_id"] for n in report["nodes"]} == {"bank_a", "bank_b", "bank_c", "bank_d"}
    assert all(n["verification"]["status"] == "OK" for n in report["nodes"])


@pytest.mark.slow
def test_scale_hundred_nodes_ten_per_round(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The scale test: 100 simulated institutions, 10 sampled per round, tiny model."""
    config = SimConfig(
        out=tmp_path,
        settings=RunSettings(
            rounds=2,
            nodes_per_round=10,
            expected_nodes=100,
            model=ModelConfig(model="tiny", max_length=32),
            train=TrainConfig(epochs=1, batch_size=8),
        ),
        partition=PartitionScheme.parse("iid"),
        nodes=100,
    )
    record = launch_simulation(prepare_simulation(config, log=lambda _: None), log=lambda _: None)
    assert [r["completed"] for r in record["rounds"]] == [True, True]
    assert all(sum(n["participated"] for n in r["nodes"].values()) == 10 for r in record["rounds"])
    assert all(eps <= 8.0 for eps in record["final"]["epsilon"].values())
