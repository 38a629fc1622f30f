"""Benchmark: what one federated round costs, with and without SecAgg+, as the federation grows.

Why it exists: secure aggregation is on by default, and SecAgg+ turns one fit round into four
message exchanges (setup, share keys, masked upload, unmask) with O(nodes × shares) key
agreements and shares. Issue #6 asks what that costs in wall time and in bytes, and sets two
targets: a SecAgg+ round at most 1.5× a plaintext round at 10 nodes, and each node's traffic
per round at most 1 % of the full model's size. This runs real simulations (the same
ServerApp/ClientApp as ``fedlora sim``, on Flower's Ray runtime, DP-SGD on at the default
ε) with the ``tiny`` model — so the protocol's cost, not the encoder's, dominates — for N
nodes (all sampled every round, IID partition of the embedded generated data, one local
epoch, a small batch), once with and once without SecAgg+, side by side in one process.

Every message the server sends or receives goes through Flower's in-process ``InMemoryGrid``;
for the duration of each run its ``push_messages``/``pull_messages`` are wrapped (class
attributes swapped and restored, no library code edited) to measure each message as a
deployment would send it: ``message_to_proto(message).ByteSize()`` (Flower's protobuf form,
without gRPC/TLS framing). Messages are attributed to the round in their ``group_id`` and to
the SecAgg+ stage in their ``secaggplus_configs`` record (replies: the stage of the
instruction they answer).

Table 1 (one row per N and mode): ``start-up`` (from the launch call until round 1 starts:
the server builds its model and evaluates it while Ray starts beside it), ``round 1``
(includes waiting for Ray and its node actors, each a process importing torch, and each
node's first model build), ``median`` (median wall time of rounds 2..R, from
``metrics.json`` ``seconds``: the server's configure-fit to the end of its evaluation and
checkpoint), ``rec ↑``/``rec ↓`` (``metrics.json`` per-node ``bytes_sent``/``bytes_received``
per round: the adapter payload; under SecAgg+ the upload is the masked int64 vector),
``wire ↑``/``wire ↓`` (measured serialized bytes each node sends/receives per round, all
messages), ``msgs`` (messages per node per round, both directions).

Table 2 (per N): ``SecAgg+/plain`` (ratio of the median round times; target ≤ 1.5 at 10
nodes; ``!!`` marks a miss) and ``round 1`` (the same ratio for round 1); where a round's
median time goes, in seconds on the server's clock from the first message of a stage to its
last reply: plaintext ``plain`` (the one fit exchange, in which nodes train) and ``rest``
(the server's aggregation, evaluation on its test split and checkpoint), SecAgg+ ``setup``
(nodes make key pairs), ``keys`` (nodes split and encrypt their secrets for each other),
``upload`` (nodes train and mask), ``unmask`` (nodes return shares) and ``rest`` (the
server's unmasking, aggregation, evaluation and checkpoint); ``extra ↑``/``extra ↓`` (the
SecAgg+ protocol overhead per node per round: wire KiB with SecAgg+ minus without) and the
SecAgg+ wire KiB per node per round in each stage. In a simulation each stage also waits on
Flower's in-memory polling (the grid and the runtime each poll every 0.1 s).

Table 3 (per model: ``tiny`` and the default all-MiniLM-L6-v2, both FFA-LoRA r = 8 on
query/value): trainable adapter floats and bytes (× 4), all model parameters and bytes
(× 4), and per N each node's wire bytes per round up and down as a share of the full model
bytes (target ≤ 1 %). For the model the runs used (``--model``, ``tiny`` unless told) these
are measured; for the other they are *estimated* (``est.``) as the measured bytes with the
measured payload swapped for the other model's (download: 4 bytes per adapter float;
upload: 4 bytes plaintext, 8 per float under SecAgg+), since the protocol overhead does not
depend on the model.

After the tables: the processes this benchmark left behind (each run stops Ray; the exit
status is 1 if any process survived). The full run (N = 3, 10, 30; 4 rounds) takes about 4
minutes on 2 cores, ``--quick`` (N = 3, 10; 3 rounds) about 2; most of each configuration
is Ray and its actors starting (round 1) and stopping.

Usage: ``python bench/round.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import psutil

from client.dp_training import DPConfig, TrainConfig
from client.model import ModelConfig, adapter_state, build_model
from client.run_settings import RunSettings
from client.secure_aggregation_settings import SecureAggregationConfig
from client.synthetic import SyntheticConfig
from sim.partitioning import PartitionScheme
from sim.simulation import (
    PARTITIONS_DIR,
    SimConfig,
    launch_simulation,
    prepare_simulation,
)

PLAIN_STAGE = "fit"
#: SecAgg+ stages in protocol order, as named in ``secaggplus_configs['stage']``.
SECAGG_STAGES: tuple[str, ...] = ("setup", "share_keys", "collect_masked_vectors", "unmask")
TEST_FRACTION = 0.1
MODES: tuple[str, ...] = ("plain", "secagg")
INSTITUTIONS = 3


@dataclasses.dataclass(frozen=True)
class WireRecord:
    """One message through the server's grid, as it would travel serialized."""

    round: int
    node: int
    direction: str  # "down" (server → node) or "up" (node → server)
    stage: str
    nbytes: int


class MessageMeter:
    """Measures every message through Flower's ``InMemoryGrid`` while active.

    The grid's ``push_messages``/``pull_messages`` class attributes are swapped for wrappers
    that serialize each message with Flower's protobuf serde and record its size; the
    originals are restored on exit.
    """

    def __init__(self) -> None:
        self.records: list[WireRecord] = []
        self.seconds = 0.0  # time spent measuring (inside the server's rounds)
        #: (round, stage) -> [first push, last reply] on the server's clock
        self.spans: dict[tuple[int, str], list[float]] = {}
        self._stage_of: dict[str, str] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self) -> Iterator[MessageMeter]:
        """Wrap the grid for the duration of the ``with`` block."""
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid

        meter = self
        push, pull = InMemoryGrid.push_messages, InMemoryGrid.pull_messages

        def push_messages(grid: Any, messages: Iterable[Any]) -> Iterable[str]:
            batch = list(messages)
            ids = push(grid, batch)
            meter._record(batch, "down")
            return ids

        def pull_messages(grid: Any, message_ids: Iterable[str]) -> Iterable[Any]:
            replies = list(pull(grid, message_ids))
            meter._record(replies, "up")
            return replies

        InMemoryGrid.push_messages = push_messages  # type: ignore[method-assign,assignment]
        InMemoryGrid.pull_messages = pull_messages  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            InMemoryGrid.push_messages = push  # type: ignore[method-assign]
            InMemoryGrid.pull_messages = pull  # type: ignore[method-assign]

    def _record(self, messages: Sequence[Any], direction: str) -> None:
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
        from flwr.common.serde import message_to_proto

        start = time.perf_counter()
        with self._lock:
            for message in messages:
                meta = message.metadata
                if direction == "down":
                    stage = PLAIN_STAGE
                    if message.has_content():
                        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
                        if configs is not None:
                            stage = str(configs.get(Key.STAGE, "?"))
                    self._stage_of[meta.message_id] = stage
                    node = meta.dst_node_id
                else:
                    stage = self._stage_of.get(meta.reply_to_message_id, "?")
                    node = meta.src_node_id
                try:
                    number = int(meta.group_id)
                except ValueError:
                    number = -1
                size = message_to_proto(message).ByteSize()
                self.records.append(WireRecord(number, node, direction, stage, size))
                span = self.spans.setdefault((number, stage), [start, start])
                span[1] = start
            self.seconds += time.perf_counter() - start


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _synthetic_for(nodes: int, per_node: int) -> SyntheticConfig:
    """Enough embedded bank data for ``nodes`` × ``per_node`` training records."""
    total = math.ceil(nodes * per_node / (1 - TEST_FRACTION))
    # institution sizes spread evenly over 0.6x..1.4x of the mean: they add up to the mean × 3
    mean = math.ceil(total / INSTITUTIONS) + 1
    return SyntheticConfig(
        domains=("bank",), institutions_per_domain=INSTITUTIONS, examples_per_institution=mean
    )


def sim_config(out: Path, nodes: int, secure: bool, args: argparse.Namespace) -> SimConfig:
    """One benchmark run: ``nodes`` nodes, all sampled each round, DP on at the default ε."""
    settings = RunSettings(
        rounds=args.rounds,
        expected_nodes=nodes,
        model=ModelConfig(model=args.model, max_length=args.max_length),
        train=TrainConfig(epochs=1, batch_size=args.batch_size),
        dp=DPConfig(),
        secure_aggregation=SecureAggregationConfig(enabled=secure),
    )
    return SimConfig(
        out=out,
        settings=settings,
        partition=PartitionScheme.parse("iid"),
        nodes=nodes,
        synthetic=_synthetic_for(nodes, args.examples_per_node),
        test_fraction=TEST_FRACTION,
        cpus_per_node=args.cpus_per_node,
    )


def _records_per_node(partitions: Path) -> list[int]:
    """Training records in each node's partition file."""
    counts = []
    for path in sorted(partitions.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            counts.append(sum(1 for _ in csv.reader(handle)) - 1)
    return counts


def _per_node_round(
    records: Sequence[WireRecord], rounds: Iterable[int]
) -> dict[str, dict[str, float]]:
    """Mean bytes and messages per (node, round), by direction and stage."""
    wanted = set(rounds)
    totals: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in records:
        if r.round not in wanted:
            continue
        cell = totals[(r.round, r.node)]
        cell[r.direction] += r.nbytes
        cell[f"{r.direction}:{r.stage}"] += r.nbytes
        cell["messages"] += 1
    keys = sorted({k for cell in totals.values() for k in cell})
    count = max(len(totals), 1)
    return {
        "mean": {k: sum(c.get(k, 0.0) for c in totals.values()) / count for k in keys},
        "max": {k: max((c.get(k, 0.0) for c in totals.values()), default=0.0) for k in keys},
    }


def run_one(nodes: int, secure: bool, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Prepare and launch one simulation; its timings and bytes."""
    out = folder / f"n{nodes}-{'secagg' if secure else 'plain'}"
    config = sim_config(out, nodes, secure, args)
    lines: list[tuple[float, str]] = []

    def log(line: str) -> None:
        lines.append((time.perf_counter(), line))
        if args.verbose:
            print(f"    [{nodes} {'secagg' if secure else 'plain'}] {line}", file=sys.stderr)

    before = _children()
    prepared = prepare_simulation(config, log=log)
    meter = MessageMeter()
    start = time.perf_counter()
    with meter.active():
        record = launch_simulation(prepared, cpus_per_node=args.cpus_per_node, log=log)
    total = time.perf_counter() - start
    leftover = sorted(_children() - before)

    rounds = record["rounds"]
    completed = [r for r in rounds if r["completed"]]
    trained = [sum(1 for n in r["nodes"].values() if n.get("participated")) for r in rounds]
    finished_at = [t for t, line in lines if line.startswith(f"round 1/{args.rounds}")]
    first_end = finished_at[0] if finished_at else start
    startup = first_end - rounds[0]["seconds"] - start if rounds else math.nan
    seconds = [float(r["seconds"]) for r in rounds]
    sent = [n["bytes_sent"] for r in rounds for n in r["nodes"].values() if n.get("participated")]
    received = [
        n["bytes_received"] for r in rounds for n in r["nodes"].values() if n.get("participated")
    ]
    wire = _per_node_round(meter.records, range(1, args.rounds + 1))
    stages = (*SECAGG_STAGES,) if secure else (PLAIN_STAGE,)
    stage_seconds = {
        stage: statistics.median(
            meter.spans[(n, stage)][1] - meter.spans[(n, stage)][0]
            for n in range(2, args.rounds + 1)
        )
        for stage in stages
        if all((n, stage) in meter.spans for n in range(2, args.rounds + 1))
    }
    return {
        "nodes": nodes,
        "secure_aggregation": secure,
        "secagg": record["config"]["secure_aggregation"],
        "rounds": len(rounds),
        "completed_rounds": len(completed),
        "nodes_trained_per_round": trained,
        "round_seconds": seconds,
        "startup_s": startup,
        "first_round_s": seconds[0] if seconds else math.nan,
        "median_round_s": statistics.median(seconds[1:]) if len(seconds) > 1 else math.nan,
        "total_s": total,
        "teardown_s": total - (first_end - start) - sum(seconds[1:]),
        "recorded_bytes_sent": statistics.fmean(sent) if sent else 0.0,
        "recorded_bytes_received": statistics.fmean(received) if received else 0.0,
        "wire": wire,
        "stage_seconds": stage_seconds,
        "meter_s": meter.seconds,
        "labels": len(prepared.settings.labels),
        "train_records_per_node": _records_per_node(out / PARTITIONS_DIR),
        "leftover_processes": leftover,
    }


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """Parameter counts of one model with FFA-LoRA r = 8."""

    name: str
    adapter_floats: int
    model_floats: int

    @property
    def adapter_bytes(self) -> int:
        """Bytes of the trainable adapter as float32."""
        return 4 * self.adapter_floats

    @property
    def model_bytes(self) -> int:
        """Bytes of every model parameter as float32."""
        return 4 * self.model_floats


def model_size(name: str, labels: int) -> ModelSize:
    """Count the trainable adapter floats and all parameters of ``name`` (FFA-LoRA r = 8)."""
    model = build_model(
        ModelConfig(model=name, lora="ffa", rank=8), [f"class {i}" for i in range(labels)]
    )
    adapter = sum(int(v.size) for v in adapter_state(model, trainable_only=True).values())
    total = sum(int(p.numel()) for p in model.parameters())
    return ModelSize(name, adapter, total)


def scaled_bytes(row: dict[str, Any], measured: ModelSize, other: ModelSize) -> tuple[float, float]:
    """(up, down) wire bytes per node per round of ``row`` (run with ``measured``), with
    ``other``'s adapter payload in place of the measured one (the protocol overhead kept)."""
    extra = other.adapter_floats - measured.adapter_floats
    up_per_float = 8 if row["secure_aggregation"] else 4
    mean = row["wire"]["mean"]
    return mean.get("up", 0.0) + up_per_float * extra, mean.get("down", 0.0) + 4 * extra


def _kib(value: float) -> str:
    return f"{value / 1024:.1f}"


def _format_runs(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'N':>3} {'mode':>7} {'start-up':>8} {'round 1':>8} {'median':>7} {'rounds':>6} "
        f"{'rec ↑':>8} {'rec ↓':>8} {'wire ↑':>8} {'wire ↓':>8} {'msgs':>5}"
    )
    out = [header, "-" * len(header)]
    for row in rows:
        mean = row["wire"]["mean"]
        out.append(
            f"{row['nodes']:>3} {'SecAgg+' if row['secure_aggregation'] else 'plain':>7} "
            f"{row['startup_s']:>8.1f} {row['first_round_s']:>8.2f} "
            f"{row['median_round_s']:>7.2f} "
            f"{row['completed_rounds']:>3}/{row['rounds']:<2} "
            f"{_kib(row['recorded_bytes_sent']):>8} {_kib(row['recorded_bytes_received']):>8} "
            f"{_kib(mean.get('up', 0.0)):>8} {_kib(mean.get('down', 0.0)):>8} "
            f"{mean.get('messages', 0.0):>5.0f}"
        )
    return "\n".join(out)


def _pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_key = {(r["nodes"], r["secure_aggregation"]): r for r in rows}
    return [
        (by_key[(n, False)], by_key[(n, True)])
        for n in sorted({r["nodes"] for r in rows})
        if (n, False) in by_key and (n, True) in by_key
    ]


def overheads(plain: dict[str, Any], secure: dict[str, Any]) -> dict[str, Any]:
    """SecAgg+/plain time ratio, where each round's time goes, and the protocol's overhead
    bytes per node per round."""
    p, s = plain["wire"]["mean"], secure["wire"]["mean"]
    stages = {
        stage: (s.get(f"up:{stage}", 0.0), s.get(f"down:{stage}", 0.0)) for stage in SECAGG_STAGES
    }
    return {
        "nodes": plain["nodes"],
        "time_ratio": secure["median_round_s"] / plain["median_round_s"],
        "first_round_ratio": secure["first_round_s"] / plain["first_round_s"],
        "plain_stage_seconds": plain["stage_seconds"],
        "plain_rest_s": plain["median_round_s"] - sum(plain["stage_seconds"].values()),
        "secagg_stage_seconds": secure["stage_seconds"],
        "secagg_rest_s": secure["median_round_s"] - sum(secure["stage_seconds"].values()),
        "overhead_up": s.get("up", 0.0) - p.get("up", 0.0),
        "overhead_down": s.get("down", 0.0) - p.get("down", 0.0),
        "secagg_stage_bytes": stages,
    }


def _format_overheads(items: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'N':>3} {'SecAgg+/plain':>13} {'round 1':>7} │ {'plain':>5} {'rest':>5} │ "
        f"{'setup':>5} {'keys':>5} {'upload':>6} {'unmask':>6} {'rest':>5} │ "
        f"{'extra ↑':>7} {'extra ↓':>7} │ ↑/↓ KiB: setup, keys, upload, unmask"
    )
    out = [header, "-" * len(header)]
    for item in items:
        plain, secure = item["plain_stage_seconds"], item["secagg_stage_seconds"]
        times = " ".join(
            f"{secure.get(stage, math.nan):>{width}.2f}"
            for stage, width in zip(SECAGG_STAGES, (5, 5, 6, 6), strict=True)
        )
        stages = "  ".join(
            f"{_kib(up)}/{_kib(down)}" for up, down in item["secagg_stage_bytes"].values()
        )
        flag = "" if item["nodes"] != 10 else (" ok" if item["time_ratio"] <= 1.5 else " !!")
        out.append(
            f"{item['nodes']:>3} {item['time_ratio']:>9.2f}×{flag:<3} "
            f"{item['first_round_ratio']:>6.2f}× │ "
            f"{plain.get(PLAIN_STAGE, math.nan):>5.2f} {item['plain_rest_s']:>5.2f} │ "
            f"{times} {item['secagg_rest_s']:>5.2f} │ "
            f"{_kib(item['overhead_up']):>7} {_kib(item['overhead_down']):>7} │ {stages}"
        )
    return "\n".join(out)


def _format_models(
    rows: Sequence[dict[str, Any]], measured: ModelSize, models: Sequence[ModelSize]
) -> str:
    header = (
        f"{'model':>8} {'adapter floats':>14} {'adapter KiB':>11} {'model floats':>12} "
        f"{'model MiB':>9} {'adapter/model':>13}  "
        "per node per round ↑/↓ as % of model bytes (plain | SecAgg+), by N"
    )
    out = [header, "-" * len(header)]
    for size in models:
        cells = []
        for plain, secure in _pairs(rows):
            shares = []
            for row in (plain, secure):
                up, down = scaled_bytes(row, measured, size)
                shares.append(
                    f"{100 * up / size.model_bytes:.2f}/{100 * down / size.model_bytes:.2f}"
                )
            cells.append(f"N={plain['nodes']}: {' | '.join(shares)}")
        estimated = "" if size.name == measured.name else " (est.)"
        out.append(
            f"{size.name:>8} {size.adapter_floats:>14,} {_kib(size.adapter_bytes):>11} "
            f"{size.model_floats:>12,} {size.model_bytes / 2**20:>9.1f} "
            f"{100 * size.adapter_floats / size.model_floats:>12.3f}%  "
            + "; ".join(cells)
            + estimated
        )
    return "\n".join(out)


def _import_apps() -> None:
    """Import what a launch imports, once, so that the first configuration's start-up is
    not charged for it."""
    import flwr.simulation  # noqa: F401

    import client.app  # noqa: F401
    import server.app  # noqa: F401


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time one federated round and measure each node's bytes, with and "
        "without SecAgg+, for growing numbers of nodes (tiny model by default, DP on).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 3 and 10 only, 3 rounds per configuration"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--nodes", type=int, nargs="+", help="node counts (overrides --quick)")
    parser.add_argument(
        "--rounds", type=int, help="rounds per configuration (default 4, or 3 with --quick)"
    )
    parser.add_argument(
        "--examples-per-node",
        type=int,
        default=32,
        help="training records per node (default 32)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="expected (Poisson) batch size (default 8)"
    )
    parser.add_argument("--max-length", type=int, default=32, help="tokens per text (default 32)")
    parser.add_argument(
        "--cpus-per-node",
        type=float,
        default=1.0,
        help="Ray CPUs per node actor; Flower runs floor(CPUs / this) actors (default 1)",
    )
    parser.add_argument(
        "--model",
        default="tiny",
        help="model the nodes train: 'tiny' (default), 'default' (all-MiniLM-L6-v2) or a path",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="run plaintext and/or SecAgg+ rounds (default both; ratios need both)",
    )
    parser.add_argument(
        "--no-default-model",
        action="store_true",
        help="skip counting the default model's parameters (it takes a few seconds)",
    )
    parser.add_argument("--verbose", action="store_true", help="echo the runs' progress lines")
    args = parser.parse_args(argv)
    if args.nodes is None:
        args.nodes = [3, 10] if args.quick else [3, 10, 30]
    if args.rounds is None:
        args.rounds = 3 if args.quick else 4
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is reported apart)")
    if min(args.nodes) < 3:
        parser.error("--nodes must be >= 3 (SecAgg+ needs at least 3 nodes per round)")
    if args.examples_per_node < args.batch_size:
        parser.error("--examples-per-node must be >= --batch-size")
    if not args.cpus_per_node > 0:
        parser.error("--cpus-per-node must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables (and write JSON when asked)."""
    args = parse_args(argv)
    started = time.perf_counter()
    _import_apps()
    before = _children()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedlora-round-bench-") as folder:
        for nodes in args.nodes:
            for secure in (mode == "secagg" for mode in MODES if mode in args.modes):
                row = run_one(nodes, secure, args, Path(folder))
                rows.append(row)
                if (
                    row["completed_rounds"] < row["rounds"]
                    or min(row["nodes_trained_per_round"], default=0) < nodes
                ):
                    print(
                        f"  warning: {nodes} nodes, {'SecAgg+' if secure else 'plain'}: "
                        f"{row['completed_rounds']}/{row['rounds']} rounds completed, nodes "
                        f"trained per round {row['nodes_trained_per_round']}",
                        file=sys.stderr,
                    )
                print(
                    f"  done: {nodes} nodes, {'SecAgg+' if secure else 'plain'}: "
                    f"{row['completed_rounds']}/{row['rounds']} rounds in {row['total_s']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    labels = rows[0]["labels"]
    names = ("tiny", "default") if not args.no_default_model else ()
    measured = model_size(args.model, labels)
    models = [measured, *(model_size(n, labels) for n in names if n != args.model)]
    pairs = [overheads(plain, secure) for plain, secure in _pairs(rows)]
    leftover = sorted(_children() - before)
    elapsed = time.perf_counter() - started
    load = os.getloadavg()[0]
    print(
        f"one federated round, {args.model} model, DP ε=8, {args.rounds} rounds per "
        "configuration, "
        f"{args.examples_per_node} records/node, batch {args.batch_size}, "
        f"{args.max_length} tokens, {os.cpu_count()} CPUs, {args.cpus_per_node:g} CPU/actor, "
        f"load average {load:.1f} at the end, {elapsed:.0f} s in all; seconds, KiB per node "
        "per round"
    )
    print(_format_runs(rows))
    print()
    print(_format_overheads(pairs))
    print()
    print(_format_models(rows, measured, models))
    print()
    print(f"processes left behind: {leftover or 'none'}")
    if args.json is not None:
        payload = {
            "benchmark": "federated round",
            "rounds": args.rounds,
            "examples_per_node": args.examples_per_node,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "cpus_per_node": args.cpus_per_node,
            "cpus": os.cpu_count(),
            "load_average_at_end": load,
            "seconds": elapsed,
            "runs": rows,
            "ratios": pairs,
            "models": [
                {**dataclasses.asdict(m), "adapter_bytes": m.adapter_bytes}
                | {"model_bytes": m.model_bytes}
                for m in models
            ],
            "leftover_processes": leftover,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
