"""The same apps run the Flower way: ``flwr run . local`` against a local simulation SuperLink."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _superlinks() -> set[int]:
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any("flower-superlink" in part for part in process.info["cmdline"] or []):
            found.add(process.pid)
    return found


@pytest.mark.slow
def test_flwr_run_local_with_run_config_overrides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bin_dir = Path(sys.executable).parent
    prepared = subprocess.run(
        [
            str(bin_dir / "fedlora"),
            "sim",
            "--model",
            "tiny",
            "--rounds",
            "2",
            "--max-length",
            "48",
            "--out",
            str(tmp_path / "run"),
            "--prepare-only",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    command = prepared.stdout.strip().splitlines()[-1]
    assert command.startswith("flwr run . local")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),  # leave the user's ~/.flwr alone
        # the app's dependencies are this environment's; never let Flower resolve them anew
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    before = _superlinks()
    try:
        result = subprocess.run(
            [*shlex.split(command), "--stream"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=600,
        )
        metrics_path = tmp_path / "run" / "metrics.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metrics_path.exists() and json.loads(metrics_path.read_text()).get("final"):
                break
            time.sleep(1)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        record = json.loads(metrics_path.read_text())
    finally:
        # `flwr run . local` leaves a detached SuperLink running: stop exactly the one it started
        for pid in _superlinks() - before:
            process = psutil.Process(pid)
            process.terminate()
            try:
                process.wait(timeout=20)
            except psutil.TimeoutExpired:
                process.kill()
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert all(r["completed"] for r in record["rounds"])
    assert set(record["final"]["epsilon"]) == {
        "bank_a",
        "bank_b",
        "bank_c",
        "hospital_a",
        "hospital_b",
        "hospital_c",
    }
    assert not (_superlinks() - before)
