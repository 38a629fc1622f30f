"""``fedlora sim``: many institutions on one machine through Flower's simulation runtime.

The driver loads one data set (a file or the embedded generated one), holds out a stratified
test split for the server, partitions the rest into nodes with flwr-datasets, writes each
node's share to its own file (as a real node would have), and runs the same ServerApp and
ClientApp that a deployment runs, on Ray. Whatever it starts it stops: Ray is shut down and
leftover child processes are terminated on success, error and Ctrl-C alike.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import psutil

from client.data_loading import DataConfig, LabelledTexts, load_labelled_texts
from client.label_text import read_label_descriptions
from client.run_settings import RunSettings
from client.synthetic import SyntheticConfig, write_embedded_data
from privacy.audit import build_report, write_report
from sim.partition_files import INDEX_FILE, write_partition_files
from sim.partitioning import PartitionScheme, partition_records
from sim.plots import plot_accuracy, plot_epsilon
from sim.splits import stratified_split

TEST_FILE = "test.csv"
PARTITIONS_DIR = "partitions"
LEDGERS_DIR = "ledgers"


@dataclass(frozen=True)
class SimConfig:
    """A simulation, resolved from ``fedlora sim`` flags.

    Parameters
    ----------
    out
        Output directory.
    settings
        The federated run's settings (labels, out/test/partition dirs are filled in by
        :func:`prepare_simulation`).
    partition
        How records are split into nodes.
    nodes
        Number of nodes (``None`` with ``natural:`` partitioning: one per value).
    data
        Data file; ``None`` uses the embedded generated data.
    data_config
        Columns and (optional) fixed label set of ``data``.
    synthetic
        Generator settings of the embedded data.
    test_fraction
        Stratified share held out as the server's test split (when ``test_data`` is None).
    test_data
        A separate file (same columns and labels) as the server's test split; all of
        ``data`` then goes to the nodes.
    seed
        Seed of the split and the partitioner.
    cpus_per_node
        CPU cores each simulated node's Ray actor reserves.
    node_budgets
        (node name, ε budget) for nodes whose own budget differs from ``--epsilon``; kept
        with the node's files, as a real node keeps it in its own node config.
    ledger_dir
        Where the nodes' ledgers live (default ``OUT/ledgers``). Point several runs at one
        directory to model nodes that take part in several runs: their spends accumulate.
    """

    out: Path
    settings: RunSettings
    partition: PartitionScheme
    nodes: int | None = None
    data: Path | None = None
    data_config: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    test_fraction: float = 0.2
    test_data: Path | None = None
    seed: int = 0
    cpus_per_node: float = 1.0
    node_budgets: tuple[tuple[str, float], ...] = ()
    ledger_dir: Path | None = None


@dataclass(frozen=True)
class PreparedSimulation:
    """Files written and settings resolved; ready to launch."""

    settings: RunSettings
    node_names: tuple[str, ...]
    out: Path


def _load_source(config: SimConfig) -> LabelledTexts:
    if config.data is None:
        path = config.out / "data" / "embedded.csv"
        return load_labelled_texts(
            path, write_embedded_data(path, config.synthetic, config.data_config)
        )
    return load_labelled_texts(config.data, config.data_config)


def _write_test_file(
    path: Path, data: LabelledTexts, indices: np.ndarray, columns: tuple[str, str]
) -> None:
    rows = [(data.texts[i], data.labels[data.label_ids[i]]) for i in indices]
    write_partition_files(path.parent, [path.stem], [rows], *columns)
    (path.parent / INDEX_FILE).unlink()  # the test file is no node's partition


def prepare_simulation(config: SimConfig, log: Callable[[str], None] = print) -> PreparedSimulation:
    """Load, split and partition the data, and write every node's file.

    On ``--resume`` the files of the interrupted run are reused as they are.
    """
    out = config.out
    partitions = out / PARTITIONS_DIR
    base = dataclasses.replace(
        config.settings,
        out_dir=str(out),
        test_data=str(out / TEST_FILE),
        partitions_dir=str(partitions),
        ledger_dir=str(config.ledger_dir or out / LEDGERS_DIR),
    )
    if config.settings.resume:
        index = json.loads((partitions / INDEX_FILE).read_text(encoding="utf-8"))
        names = tuple(str(e["node"]) for e in index)
        labels = tuple(json.loads((out / "labels.json").read_text(encoding="utf-8")))
        settings = dataclasses.replace(base, labels=labels, expected_nodes=len(names))
        return PreparedSimulation(_clamp_sampling(settings), names, out)
    data = _load_source(config)
    if config.settings.label_descriptions_file:  # fail before writing anything
        read_label_descriptions(Path(config.settings.label_descriptions_file), data.labels)
    out.mkdir(parents=True, exist_ok=True)
    columns = (config.settings.text_column, config.settings.label_column)
    if config.test_data is not None:
        held = load_labelled_texts(
            config.test_data, dataclasses.replace(config.data_config, labels=data.labels)
        )
        train_idx = np.arange(len(data.texts))
        _write_test_file(out / TEST_FILE, held, np.arange(len(held.texts)), columns)
        test_count = len(held.texts)
    else:
        train_idx, test_idx = stratified_split(data.label_ids, config.test_fraction, config.seed)
        _write_test_file(out / TEST_FILE, data, test_idx, columns)
        test_count = len(test_idx)
    natural = None
    if config.partition.kind == "natural":
        natural_all = data.extra_columns.get(config.partition.column)
        natural = None if natural_all is None else [natural_all[i] for i in train_idx]
    parts = partition_records(
        data.label_ids[train_idx]
        if isinstance(data.label_ids, np.ndarray)
        else [data.label_ids[i] for i in train_idx],
        config.partition,
        config.nodes,
        config.seed,
        natural_values=natural,
        min_size=config.settings.train.batch_size,
    )
    rows = [
        [(data.texts[train_idx[i]], data.labels[data.label_ids[train_idx[i]]]) for i in p.indices]
        for p in parts
    ]
    names = tuple(p.name for p in parts)
    unknown = sorted({name for name, _ in config.node_budgets} - set(names))
    if unknown:
        raise ValueError(f"--node-budget names unknown nodes {unknown}; nodes are {list(names)}")
    budgets = {name: {"budget-epsilon": eps} for name, eps in config.node_budgets}
    write_partition_files(partitions, names, rows, *columns, node_configs=budgets)
    (out / "labels.json").write_text(json.dumps(list(data.labels)), encoding="utf-8")
    settings = dataclasses.replace(base, labels=data.labels, expected_nodes=len(parts))
    if len(parts) <= 12:
        sizes = ", ".join(f"{n}={len(p.indices)}" for n, p in zip(names, parts, strict=True))
    else:
        counts = sorted(len(p.indices) for p in parts)
        sizes = f"sizes {counts[0]}..{counts[-1]}, median {counts[len(counts) // 2]}"
    log(
        f"data: {len(train_idx)} train records in {len(parts)} nodes ({sizes}); "
        f"{test_count} in the server's test split"
        f"{f' ({config.test_data})' if config.test_data else ' (held out)'}; "
        f"{len(data.labels)} labels"
    )
    return PreparedSimulation(_clamp_sampling(settings), names, out)


def _clamp_sampling(settings: RunSettings) -> RunSettings:
    if settings.nodes_per_round > settings.expected_nodes:
        raise ValueError(
            f"--nodes-per-round {settings.nodes_per_round} exceeds the {settings.expected_nodes} "
            "nodes of this data set"
        )
    return settings


def launch_simulation(
    prepared: PreparedSimulation, cpus_per_node: float = 1.0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the federation on Flower's Ray simulation runtime; returns ``metrics.json``.

    Ray and any process it started are stopped before this returns, whatever happens.
    """
    from flwr.simulation import run_simulation

    from client.app import make_client_app
    from server.app import make_server_app

    # fedlora prints its own per-round lines; Flower's INFO log would bury them. Importing
    # flwr sets its logger to DEBUG, so this must come after the import.
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.CRITICAL)  # node failures are reported by the strategy
    flwr_logger.propagate = False
    settings = prepared.settings
    cpus = max(1, os.cpu_count() or 1)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cpus_per_node, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }
    with DescendantTracker() as tracker, _exit_cleanly_on_signals(log, tracker):
        # If a library's own signal handler ends the process (sys.exit), stop Ray's processes
        # at interpreter exit too; the normal path unregisters this below.
        atexit.register(stop_ray_and_children, 5.0, tracker)
        try:
            run_simulation(
                server_app=make_server_app(settings, log),
                client_app=make_client_app(settings),
                num_supernodes=len(prepared.node_names),
                backend_config=backend_config,
            )
        finally:
            stop_ray_and_children(tracker=tracker)
            atexit.unregister(stop_ray_and_children)
    record = json.loads((prepared.out / "metrics.json").read_text(encoding="utf-8"))
    plot_accuracy(record, prepared.out / "accuracy.png")
    plot_epsilon(record, prepared.out / "epsilon.png")
    ledgers = sorted(Path(settings.ledger_dir).glob("*.jsonl"))
    if ledgers:
        audit = prepared.out / "audit"
        write_report(build_report(ledgers), audit / "report.html", audit / "report.json")
    return record


INTERRUPTED_EXIT_CODE = 130


@contextlib.contextmanager
def _exit_cleanly_on_signals(
    log: Callable[[str], None], tracker: DescendantTracker
) -> Iterator[None]:
    """On Ctrl-C or SIGTERM: stop Ray and every child process, then exit 130.

    Flower's simulation loop does not unwind on KeyboardInterrupt (its server runs in a thread
    and its workers wait on queues), so the driver ends the run itself. Nothing is lost: the
    metrics and checkpoint of every completed round and every recorded privacy spend are
    already on disk (atomically), and ``--resume`` continues from there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        try:
            log(
                f"\ninterrupted ({signal.Signals(signum).name}): stopping Ray and node "
                "processes; completed rounds are saved, continue with --resume"
            )
            stop_ray_and_children(grace_seconds=5.0, tracker=tracker)
            sys.stdout.flush()
        finally:
            os._exit(INTERRUPTED_EXIT_CODE)  # whatever Ray was doing, this process ends here

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class DescendantTracker:
    """Remembers every process this one starts, even after it is re-parented.

    On Ctrl-C the terminal signals the whole process group: Ray's raylet may die first and its
    own children (agents, workers) are re-parented away from us, out of reach of a
    ``children()`` walk at exit. Polling while the run is alive keeps their PIDs (with start
    times, so a recycled PID is never touched).
    """

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self._me = psutil.Process()
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._poll, name="descendant-tracker", daemon=True)

    def __enter__(self) -> DescendantTracker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.snapshot()
            self._stop.wait(self._interval)

    def snapshot(self) -> None:
        """Record the current descendants."""
        import psutil

        for child in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error), self._lock:
                self._seen[child.pid] = child.create_time()

    def processes(self) -> list[Any]:
        """Every recorded descendant that is still the same process."""
        import psutil

        self.snapshot()
        alive = []
        with self._lock:
            seen = dict(self._seen)
        for pid, started in seen.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() == started:
                    alive.append(process)
        return alive


def stop_ray_and_children(
    grace_seconds: float = 10.0, tracker: DescendantTracker | None = None
) -> list[int]:
    """Shut Ray down and terminate (then kill) every process this one started.

    Returns
    -------
    list of int
        PIDs that had to be signalled.
    """
    import psutil

    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # stopping the processes below matters more than a clean shutdown
        pass
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    if tracker is not None:
        found.update({p.pid: p for p in tracker.processes()})
    terminate_then_kill(list(found.values()), grace_seconds)
    return sorted(found)


def terminate_then_kill(processes: Sequence[psutil.Process], grace_seconds: float) -> None:
    """SIGTERM each process, wait up to ``grace_seconds``, SIGKILL the rest and reap them."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_seconds)
