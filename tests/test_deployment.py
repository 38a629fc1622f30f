"""A real deployment on 127.0.0.1: TLS SuperLink with node authentication, three SuperNodes.

What an institution's IT does (docs/deploy.md), end to end, with the same commands and flags:
``fedlora certs init`` makes the CA, the SuperLink's certificate and node keys (one node makes
its own key on its own machine); ``flower-superlink`` serves TLS with
``--enable-supernode-auth``; ``flwr supernode register`` enrols the nodes' public keys through
the Control API; three ``flower-supernode`` processes, each with its own data, budget and node
directory, join; ``flwr run . fedlora`` runs two DP-SGD rounds under SecAgg+. A node with an
unregistered key, a node without a key and a node without TLS must be refused, and every API
must listen on 127.0.0.1 only. Afterwards the nodes' ledgers must verify (``fedlora audit``),
the global adapter must have changed, and no process the test started may be left.

The whole deployment runs once (module fixture) and is stopped before the first assertion;
the tests then read what it left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deployment_support import (
    Finished,
    ProcessSupervisor,
    free_ports,
    json_output,
    supervised,
    toml_config,
    wait_for_port,
    write_flower_config,
)

from client.synthetic import SyntheticConfig, generate_records, labels_for, write_csv

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: the SuperLink connection name in FLWR_HOME/config.toml (``flwr ... fedlora``)
CONNECTION = "fedlora"
#: enrolled by the coordinator (keys from its ``certs init``) ...
CENTRAL_NODES = ("bank_a", "bank_b")
#: ... and a node that made its own key on its own machine (only its public key travels)
SELF_KEYED_NODE = "bank_c"
NODES = (*CENTRAL_NODES, SELF_KEYED_NODE)
#: has a key from the coordinator's ``certs init`` but is never registered
INTRUDER = "intruder"
BUDGET_EPSILON = 8.0
ROUNDS = 2

# Deadlines, not measurements: they only bound how long a broken deployment can hang.
READY_SECONDS = 120.0
REFUSAL_SECONDS = 90.0
RUN_SECONDS = 420.0
CLI_SECONDS = 120.0


@dataclass
class Deployment:
    """What the deployment left behind for the tests to check."""

    tmp: Path
    certs: Path
    out: Path
    labels: tuple[str, ...]
    node_dirs: dict[str, Path]
    ledger_keys: dict[str, Path]
    registered: dict[str, str] = field(default_factory=dict)
    nodes_before_run: list[dict[str, Any]] = field(default_factory=list)
    nodes_after_run: list[dict[str, Any]] = field(default_factory=list)
    intruder: Finished | None = None
    anonymous: Finished | None = None
    plaintext: Finished | None = None
    superlink_log: str = ""
    run_id: str = ""
    run_status: str = ""
    server_log: str = ""
    logs: str = ""
    listening: set[tuple[str, str, int]] = field(default_factory=set)
    leftovers: list[str] = field(default_factory=list)
    error: str = ""

    def explain(self) -> str:
        """Everything worth reading when an assertion fails."""
        return (
            f"{self.error}\nrun {self.run_id} status {self.run_status!r}\n"
            f"===== ServerApp log (flwr log) =====\n{self.server_log[-4000:]}\n"
            f"===== process logs =====\n{self.logs}"
        )


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp / "coordinator" / "flwr-home"),
        # use this environment's packages; never let Flower run `uv sync` (it would download
        # a CUDA build of torch)
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NO_COLOR": "1",
        # inherited by every descendant: finds them wherever they were re-parented
        "FEDLORA_DEPLOYMENT_TEST": str(tmp),
    }


def _check(result: Finished, what: str) -> Finished:
    if result.code != 0:
        raise RuntimeError(f"{what} failed: {result}")
    return result


def _write_data(tmp: Path) -> tuple[dict[str, Path], Path, tuple[str, ...]]:
    """Each node's CSV (its institution's rows) and the server's test split."""
    rows = generate_records(
        SyntheticConfig(
            domains=("bank",), institutions_per_domain=3, examples_per_institution=200, seed=11
        )
    )
    test_rows = []
    files = {}
    for node in NODES:
        mine = [row for row in rows if row["institution"] == node]
        held_out = len(mine) // 5
        test_rows += mine[:held_out]
        site = tmp / "sites" / node
        site.mkdir(parents=True)
        files[node] = site / "data.csv"
        write_csv(mine[held_out:], files[node])
    test_file = tmp / "coordinator" / "test.csv"
    write_csv(test_rows, test_file)
    return files, test_file, labels_for(("bank",))


def _supernode_list(sup: ProcessSupervisor) -> list[dict[str, Any]]:
    result = _check(
        sup.run(
            sup.unique("flwr-supernode-list"),
            ["flwr", "supernode", "list", CONNECTION, "--format", "json"],
            CLI_SECONDS,
        ),
        "flwr supernode list",
    )
    return list(json_output(result.stdout)["nodes"])


def _run_status(sup: ProcessSupervisor, run_id: str) -> str:
    result = sup.run(
        sup.unique("flwr-ls"),
        ["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
        CLI_SECONDS,
    )
    if result.code != 0:
        return ""
    runs = json_output(result.stdout).get("runs", [])
    return str(runs[0]["status"]) if runs else ""


def _deploy(
    tmp: Path,
    sup: ProcessSupervisor,
    deployment: Deployment,
    data: dict[str, Path],
    test_file: Path,
) -> None:
    certs = deployment.certs
    link_port, *node_ports = free_ports(1 + len(NODES) + 3)

    # 1. key material: the coordinator's CA, server certificate and central node keys; and
    # the self-keyed node's own `certs init` on its own machine (only public keys leave it)
    own = tmp / "sites" / SELF_KEYED_NODE / "keys"
    commands = {
        "certs-init-coordinator": [
            "fedlora",
            "certs",
            "init",
            "--out",
            str(certs),
            "--server-name",
            "localhost",
            "--server-ip",
            "127.0.0.1",
            "--nodes",
            *CENTRAL_NODES,
            INTRUDER,
        ],
        f"certs-init-{SELF_KEYED_NODE}": [
            "fedlora",
            "certs",
            "init",
            "--out",
            str(own),
            "--server-name",
            "localhost",
            "--nodes",
            SELF_KEYED_NODE,
        ],
    }
    for name, argv in commands.items():
        sup.start(name, argv, split_output=True)
    for name in commands:
        _check(sup.wait(name, CLI_SECONDS), name)
    public_keys: dict[str, Path] = {}
    for node in (*CENTRAL_NODES, INTRUDER):
        # delivered to the node's machine; the coordinator keeps only the public halves
        site = tmp / "sites" / node
        shutil.copytree(certs / "nodes" / node, deployment.node_dirs[node])
        shutil.copy2(certs / "ca.crt", site / "ca.crt")
        for private in ("auth_key", "ledger_signing_key.pem"):
            (certs / "nodes" / node / private).unlink()
        public_keys[node] = certs / "nodes" / node / "auth_key.pub"
        deployment.ledger_keys[node] = certs / "nodes" / node / "ledger_signing_key.pub.pem"
    site = tmp / "sites" / SELF_KEYED_NODE
    for unused in ("ca.crt", "ca.key", "server.crt", "server.key"):
        (own / unused).unlink()  # the node trusts the coordinator's CA, not its own
    shutil.copy2(certs / "ca.crt", site / "ca.crt")
    deployment.node_dirs[SELF_KEYED_NODE] = own / "nodes" / SELF_KEYED_NODE
    public_keys[SELF_KEYED_NODE] = deployment.node_dirs[SELF_KEYED_NODE] / "auth_key.pub"
    deployment.ledger_keys[SELF_KEYED_NODE] = (
        deployment.node_dirs[SELF_KEYED_NODE] / "ledger_signing_key.pub.pem"
    )

    # 2. the SuperLink: TLS and node authentication, every API on 127.0.0.1 only
    state = tmp / "superlink"
    state.mkdir()
    link = sup.start(
        "superlink",
        [
            "flower-superlink",
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.crt"),
            "--ssl-keyfile",
            str(certs / "server.key"),
            "--enable-supernode-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
            "--database",
            str(state / "state.db"),
        ],
        cwd=state,
    )
    if not wait_for_port(link_port, time.monotonic() + READY_SECONDS, link):
        raise RuntimeError("the SuperLink did not start listening")
    write_flower_config(
        Path(sup.env["FLWR_HOME"]), CONNECTION, f"127.0.0.1:{link_port}", certs / "ca.crt"
    )

    # 3. enrol the nodes' public keys (never the intruder's)
    for node in NODES:
        result = _check(
            sup.run(
                f"register-{node}",
                [
                    "flwr",
                    "supernode",
                    "register",
                    str(public_keys[node]),
                    CONNECTION,
                    "--format",
                    "json",
                ],
                CLI_SECONDS,
            ),
            f"flwr supernode register {node}",
        )
        deployment.registered[node] = str(json_output(result.stdout)["node-id"])

    # 4. the nodes, each on "its own machine": its data, node dir, budget, CA copy
    def supernode(
        name: str,
        port: int,
        *,
        key: Path | None,
        insecure: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        site = tmp / "sites" / name
        node_config = toml_config(
            {
                "data-path": str(data.get(name, data[CENTRAL_NODES[0]])),
                "node-dir": str(deployment.node_dirs[name]),
                "budget-epsilon": BUDGET_EPSILON,
                "node-name": name,
            }
        )
        transport = ["--insecure"] if insecure else ["--root-certificates", str(site / "ca.crt")]
        auth = ["--auth-supernode-private-key", str(key)] if key is not None else []
        sup.start(
            f"supernode-{name}",
            [
                "flower-supernode",
                *transport,
                *auth,
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--port",
                str(port),
                "--node-config",
                node_config,
                *extra,
            ],
            env={"FLWR_HOME": str(site / "flwr-home")},
            cwd=site,
        )

    # the enrolled nodes, and who must be refused: a key nobody registered, a node without a
    # key (it would register itself if the SuperLink allowed it), a node without TLS
    for node, port in zip(NODES, node_ports, strict=False):
        supernode(node, port, key=deployment.node_dirs[node] / "auth_key")
    for name in ("anonymous", "plaintext"):
        (tmp / "sites" / name).mkdir()
        deployment.node_dirs[name] = tmp / "sites" / name / "node"
        shutil.copy2(certs / "ca.crt", tmp / "sites" / name / "ca.crt")
    supernode(INTRUDER, node_ports[-3], key=deployment.node_dirs[INTRUDER] / "auth_key")
    supernode("anonymous", node_ports[-2], key=None)
    supernode("plaintext", node_ports[-1], key=None, insecure=True, extra=("--max-retries", "2"))
    deadline = time.monotonic() + READY_SECONDS
    while True:
        listed = _supernode_list(sup)
        online = {n["node-id"] for n in listed if n["status"] == "online"}
        if online >= set(deployment.registered.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    deployment.intruder = sup.wait(f"supernode-{INTRUDER}", REFUSAL_SECONDS)
    deployment.anonymous = sup.wait("supernode-anonymous", REFUSAL_SECONDS)
    deployment.plaintext = sup.wait("supernode-plaintext", REFUSAL_SECONDS)
    deployment.superlink_log = sup.output("superlink")
    deployment.nodes_before_run = _supernode_list(sup)
    deployment.listening |= sup.listening()

    # 5. the run, from the app directory
    run_config = toml_config(
        {
            "num-server-rounds": ROUNDS,
            "nodes-per-round": 3,
            "expected-nodes": 3,
            "labels": ",".join(deployment.labels),
            "text-column": "text",
            "label-column": "label",
            "model": "tiny",
            "max-length": 32,
            "local-epochs": 1,
            "batch-size": 16,
            "dp": True,
            "target-epsilon": BUDGET_EPSILON,
            "out-dir": str(deployment.out),
            "test-data": str(test_file),
            "round-timeout": 300.0,
        }
    )
    result = _check(
        sup.run(
            "flwr-run",
            ["flwr", "run", ".", CONNECTION, "--run-config", run_config, "--format", "json"],
            CLI_SECONDS,
            cwd=ROOT,
        ),
        "flwr run",
    )
    deployment.run_id = str(json_output(result.stdout)["run-id"])

    # 6. wait for it. Cheap signs first (the ServerApp's metrics.json, the SuperLink's log
    # line "Finished task ... of run <id>"), then the run's status from the Control API; the
    # status is also asked every minute, so that a run that failed early is not waited for.
    metrics = deployment.out / "metrics.json"
    deadline = time.monotonic() + RUN_SECONDS
    next_status = time.monotonic() + 60
    while time.monotonic() < deadline:
        sup.track()
        done = False
        with contextlib.suppress(OSError, ValueError, KeyError):
            done = json.loads(metrics.read_text())["final"] is not None
        done = done or any(
            "Finished task" in line and deployment.run_id in line
            for line in sup.output("superlink").splitlines()
        )
        if done or time.monotonic() > next_status:
            deployment.run_status = _run_status(sup, deployment.run_id)
            next_status = time.monotonic() + (2 if done else 60)
            if deployment.run_status.startswith("finished"):
                break
        time.sleep(1)
    else:
        deployment.error = f"the run did not finish within {RUN_SECONDS:.0f} s"
    deployment.listening |= sup.listening()
    shown = sup.run(
        "flwr-log", ["flwr", "log", deployment.run_id, CONNECTION, "--show"], CLI_SECONDS
    )
    deployment.server_log = shown.stdout + shown.stderr
    deployment.nodes_after_run = _supernode_list(sup)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("deploy")
    (tmp / "coordinator").mkdir()
    data, test_file, labels = _write_data(tmp)
    result = Deployment(
        tmp=tmp,
        certs=tmp / "coordinator" / "certs",
        out=tmp / "coordinator" / "run",
        labels=labels,
        node_dirs={node: tmp / "sites" / node / "node" for node in (*CENTRAL_NODES, INTRUDER)},
        ledger_keys={},
    )
    (tmp / "sites" / INTRUDER).mkdir(parents=True)
    sup: ProcessSupervisor | None = None
    try:
        with supervised(
            tmp / "logs", _env(tmp), ROOT, marker=("FEDLORA_DEPLOYMENT_TEST", str(tmp))
        ) as sup:
            try:
                _deploy(tmp, sup, result, data, test_file)
            except Exception as exc:  # reported by every test, with the logs
                result.error = f"{result.error}\n{type(exc).__name__}: {exc}".strip()
    finally:
        if sup is not None:
            result.logs = sup.logs()
            result.leftovers = sup.leftovers()
            sup.stop_all()  # only if something survived the first attempt
    yield result


def _ledgers(deployment: Deployment, node: str) -> list[Path]:
    return sorted(deployment.node_dirs[node].glob("*.jsonl"))


# ---------------------------------------------------------------------------------- tests


def test_run_completes_over_tls_with_enrolled_nodes(deployment: Deployment) -> None:
    assert not deployment.error, deployment.explain()
    assert deployment.run_status == "finished:completed", deployment.explain()
    record = json.loads((deployment.out / "metrics.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2], deployment.explain()
    assert all(r["completed"] for r in record["rounds"]), deployment.explain()
    assert record["final"]["completed_rounds"] == ROUNDS
    assert set(record["final"]["epsilon"]) == set(NODES)
    for entry in record["rounds"]:
        assert set(entry["nodes"]) == set(NODES)
        assert all(node["participated"] for node in entry["nodes"].values())
    assert all(eps <= BUDGET_EPSILON for eps in record["final"]["epsilon"].values())
    # the three enrolled nodes were online before the run started, and only they
    before = {n["node-id"]: n["status"] for n in deployment.nodes_before_run}
    assert before == dict.fromkeys(deployment.registered.values(), "online"), before
    assert "ROUND 2" in deployment.server_log or "round 2" in deployment.server_log.lower()


def test_secure_aggregation_is_on_by_default(deployment: Deployment) -> None:
    assert not deployment.error, deployment.explain()
    record = json.loads((deployment.out / "metrics.json").read_text())
    secure = record["config"].get("secure_aggregation")
    assert isinstance(secure, dict), record["config"]
    assert secure["enabled"] is True
    assert secure["mask_generator"]
    assert 2 <= secure["threshold"] <= secure["shares"] <= len(NODES)


def test_each_node_ledger_verifies(deployment: Deployment) -> None:
    from privacy.audit import verify_ledger
    from privacy.signing_keys import load_public_key

    assert not deployment.error, deployment.explain()
    record = json.loads((deployment.out / "metrics.json").read_text())
    ledgers = []
    for node in NODES:
        found = _ledgers(deployment, node)
        assert len(found) == 1, (node, sorted(deployment.node_dirs[node].iterdir()))
        # signed with the ledger key from `fedlora certs init`, the one the auditor enrolled
        enrolled = load_public_key(deployment.ledger_keys[node])
        result = verify_ledger(found[0], enrolled)
        assert result.ok, (node, result.problem)
        assert result.signatures == "verified"
        assert [e.round for e in result.verified_entries] == [1, 2]
        assert result.epsilon == pytest.approx(record["final"]["epsilon"][node], rel=1e-9)
        ledgers.append(found[0])

    # what a compliance officer runs: each ledger against the key enrolled for its node, then
    # the report over all of them (in parallel: each command loads the accountants)
    reports = deployment.tmp / "coordinator" / "audit"
    commands = {
        f"audit-verify-{node}": [
            "fedlora",
            "audit",
            "verify",
            str(ledger),
            "--public-key",
            str(deployment.ledger_keys[node]),
        ]
        for node, ledger in zip(NODES, ledgers, strict=True)
    }
    commands["audit-report"] = [
        "fedlora",
        "audit",
        "report",
        *map(str, ledgers),
        "--out",
        str(reports / "report.html"),
        "--json",
        str(reports / "report.json"),
    ]
    with supervised(deployment.tmp / "audit-logs", _env(deployment.tmp), ROOT) as sup:
        for name, argv in commands.items():
            sup.start(name, argv, split_output=True)
        for name in commands:
            finished = sup.wait(name, CLI_SECONDS)
            assert finished.code == 0, f"{name}: {finished}"
    assert (reports / "report.html").stat().st_size > 0
    assert json.loads((reports / "report.json").read_text())


def test_global_adapter_changed(deployment: Deployment) -> None:
    from client.adapter_io import load_adapter
    from client.model import adapter_state, build_model

    assert not deployment.error, deployment.explain()
    final = load_adapter(deployment.out / "adapter")
    assert final.labels == deployment.labels
    assert final.model_config.model == "tiny"
    fresh = adapter_state(build_model(final.model_config, final.labels), trainable_only=True)
    assert set(fresh) <= set(final.state)
    assert any(not np.allclose(final.state[name], fresh[name]) for name in fresh)


def test_unregistered_node_is_refused(deployment: Deployment) -> None:
    assert deployment.intruder is not None, deployment.explain()
    # it gave up by itself, told why, and the SuperLink says it does not know the key
    assert deployment.intruder.code not in (None, 0), str(deployment.intruder)
    assert "Failed to activate SuperNode" in deployment.intruder.stderr, str(deployment.intruder)
    assert "No SuperNode found with the given public key" in deployment.superlink_log
    for listed in (deployment.nodes_before_run, deployment.nodes_after_run):
        assert {n["node-id"] for n in listed} == set(deployment.registered.values())


def test_node_without_key_cannot_register_itself(deployment: Deployment) -> None:
    # what --enable-supernode-auth changes: without it, a node without a key registers itself
    assert deployment.anonymous is not None, deployment.explain()
    assert deployment.anonymous.code not in (None, 0), str(deployment.anonymous)
    assert "All SuperNodes must be registered via the CLI" in deployment.anonymous.stderr, str(
        deployment.anonymous
    )
    for listed in (deployment.nodes_before_run, deployment.nodes_after_run):
        assert {n["node-id"] for n in listed} == set(deployment.registered.values())


def test_node_without_tls_is_refused(deployment: Deployment) -> None:
    assert deployment.plaintext is not None, deployment.explain()
    assert deployment.plaintext.code not in (None, 0), str(deployment.plaintext)
    assert "Failed to initialize the connection to the SuperLink" in deployment.plaintext.stderr
    assert "Failed to activate SuperNode" not in deployment.plaintext.stderr
    for listed in (deployment.nodes_before_run, deployment.nodes_after_run):
        assert {n["node-id"] for n in listed} == set(deployment.registered.values())


def test_every_api_listens_on_loopback_only(deployment: Deployment) -> None:
    assert not deployment.error, deployment.explain()
    programs = {program for program, _, _ in deployment.listening}
    assert {"flower-superlink", "flower-supernode"} <= programs, deployment.listening
    assert all(ip == "127.0.0.1" for _, ip, _ in deployment.listening), deployment.listening


def test_no_process_left_behind(deployment: Deployment) -> None:
    assert deployment.leftovers == [], deployment.leftovers
