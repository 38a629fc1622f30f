"""A node that crashes mid-round after writing its spend keeps the charge (write-ahead).

The crash is real: a node process runs a round whose ledger append is followed by
``os._exit`` (no cleanup, no ``finally``), i.e. the process dies after the spend reached the
disk and before any update could leave it. The same node then runs the next round of that
run in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from client.model import ModelConfig
from client.run_settings import RunSettings
from client.synthetic import SyntheticConfig, generate_records, labels_for, write_csv
from privacy.audit import verify_ledger
from privacy.ledger import read_ledger

CRASH_STATUS = 17

NODE_SCRIPT = """
import json, os, sys
from pathlib import Path

from client.model import adapter_signature, adapter_state, frozen_adapter_digest
from client.node import load_node, run_round
from client.round_plan import RoundPlan
from client.run_settings import NodeSettings, settings_from_run_config
from privacy.ledger import PrivacyLedger

args = json.loads(sys.argv[1])
if args["crash_after_spend"]:
    real_append = PrivacyLedger.append_spend

    def append_then_die(self, **kwargs):
        entry = real_append(self, **kwargs)
        os._exit(args["crash_status"])  # the process dies here: nothing is sent

    PrivacyLedger.append_spend = append_then_die
run = settings_from_run_config(args["run_config"])
node = load_node(
    NodeSettings("clinic", Path(args["data"]), Path(args["node_dir"]), budget_epsilon=8.0), run
)
state = adapter_state(node.model, trainable_only=True)
plan = RoundPlan(
    round=args["round"],
    total_rounds=run.rounds,
    local_epochs=1,
    batch_size=32,
    learning_rate=0.02,
    clip_norm=1.0,
    target_epsilon=8.0,
    target_delta=0.0,
    adapter_signature=adapter_signature(state),
    frozen_adapter_digest=frozen_adapter_digest(node.model),
)
outcome = run_round(node, plan, [state[n] for n in node.trainable_names], "run-1")
print(json.dumps({"sent_tensors": len(outcome.delta)}))
"""


def _node_round(tmp_path: Path, round_: int, crash: bool) -> subprocess.CompletedProcess[str]:
    config = SyntheticConfig(domains=("bank",), institutions_per_domain=1, seed=3)
    data = tmp_path / "clinic.csv"
    if not data.exists():
        write_csv(generate_records(config), data)
    run = RunSettings(
        rounds=3,
        labels=labels_for(("bank",)),
        text_column="text",
        label_column="label",
        model=ModelConfig(model="tiny", max_length=32),
    )
    args = {
        "crash_after_spend": crash,
        "crash_status": CRASH_STATUS,
        "run_config": run.to_run_config(),
        "data": str(data),
        "node_dir": str(tmp_path / "node"),
        "round": round_,
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", NODE_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_a_crash_after_the_spend_keeps_the_charge_and_the_ledger_verifies(
    tmp_path: Path,
) -> None:
    crashed = _node_round(tmp_path, 1, crash=True)
    assert crashed.returncode == CRASH_STATUS, crashed.stderr[-2000:]
    assert "sent_tensors" not in crashed.stdout  # died before returning an update
    (ledger,) = (tmp_path / "node").rglob("*.jsonl")
    after_crash = verify_ledger(ledger)
    assert after_crash.ok, after_crash.problem
    assert after_crash.entries == 1 and after_crash.epsilon > 0
    assert after_crash.signatures == "verified"

    resumed = _node_round(tmp_path, 2, crash=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["sent_tensors"] > 0
    after_resume = verify_ledger(ledger, full=True)
    assert after_resume.ok and after_resume.entries == 2, after_resume.problem
    first, second = read_ledger(ledger)
    assert (first.round, second.round) == (1, 2)
    # the crashed round stays charged: round 2's ε composes on top of it
    assert second.epsilon > first.epsilon == after_crash.epsilon
