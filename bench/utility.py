"""Benchmark 4, the utility study: what DP, federation, the LoRA variant, skew and the
zero-shot prior cost or buy in accuracy.

Why it exists: issue #6 asks what the privacy machinery costs in model quality. This trains
the default model (all-MiniLM-L6-v2 with FFA-LoRA) on two real data sets in up to 22 settings
("cells") and reports test accuracy and macro-F1, before and after training, next to the
privacy actually spent, so that docs/results.md can say what an ε buys and at what price. It
only *wraps* the ``fedlora`` commands: every cell is one ``fedlora train`` or ``fedlora sim``
command line, parsed by the ``fedlora`` argument parser itself and run in this process through
the same functions the command calls (``run_train_job``; ``prepare_simulation`` +
``launch_simulation``). The exact command is recorded with each result and can be rerun by
hand from the same directory.

Cells (per data set). Unless a cell says otherwise it uses FFA-LoRA and the prototype head
(``--head prototype``: cosine similarity to class vectors that start as the encoder's
embeddings of the label names, a zero-shot classifier before any training); ``linear`` cells
use a randomly initialised linear head instead (``--head linear``, no prior). Federated cells
use 10 nodes with a Dirichlet α=0.5 label skew, all nodes sampled every round and SecAgg+ on
(the default); their ε is each node's budget.

- ``central-nodp``, ``central-dp1``, ``central-dp3``, ``central-dp8``: one institution holding
  all training data (``fedlora train``), without DP and with DP-SGD at ε = 1, 3, 8;
- ``central-dp1-norefit``, ``central-dp8-norefit``: as ``central-dp1`` and ``central-dp8``
  without ``fedlora train``'s head refit (``--head-refit-steps 0``): what the refit adds
  (every centralized DP cell with the prototype head refits by default, ``Cell.head_refit``);
- ``central-lora-dp8``: as ``central-dp8`` with plain LoRA (A and B trained);
- ``central-linear-nodp``, ``central-linear-dp1``, ``central-linear-dp3``,
  ``central-linear-dp8``: the centralized cells with the linear head;
- ``fed-nodp``, ``fed-dp1``, ``fed-dp3``, ``fed-dp8``: federated (``fedlora sim``), without DP
  and with ε = 1, 3, 8;
- ``fed-lora-dp8``: as ``fed-dp8`` with plain LoRA;
- ``fed-iid-dp8``: as ``fed-dp8`` with an IID partition;
- ``fed-linear-dp8``: as ``fed-dp8`` with the linear head;
- ``central-desc-dp1``, ``central-desc-dp8``, ``fed-desc-dp8``: the prior from a data set's
  written label descriptions (data sets that have them);
- ``central-dp8-x2``, ``fed-nodp-x2``, ``fed-dp8-x2``: twice the passes over the data (6
  epochs, 6 rounds) at the same ε, the federated pair at node batch 256: what more, noisier
  steps buy (``Cell.epoch_factor``, ``Cell.node_batch_size``);
- ``fed-nodp-x3``, ``fed-dp8-x3``: as the ``-x2`` pair with three times the rounds (9),
  because the 6-round curve under DP was still rising at its last round; the pair measures
  the DP gap at 9 rounds.

``fed-dp8`` is thus the FFA-LoRA, Dirichlet and prototype arm of three comparisons at ε=8,
and ``central-dp8`` that of two.

The shared settings are the fields of :data:`FULL_PLAN` (one place to change them; ``--list``
and ``utility.md`` print the values in force). Every cell but the ``-x2`` and ``-x3`` ones sees
the same number of passes over the data: ``fedlora sim`` runs ``rounds`` rounds of
``local_epochs`` local epochs on every node and ``fedlora train`` runs ``rounds ×
local_epochs`` epochs. Centralized and node-local training have their own expected batch size
(``central_batch_size``, ``node_batch_size``; Poisson under DP), as a node holds only a tenth
of the data; a data set whose Dirichlet nodes cannot all hold the plan's node batch caps it
(``DatasetSpec.max_node_batch_size``). Both commands use the same Adam learning rate
(``learning_rate``, passed as ``--lr``), ``max_length`` and, in DP cells, the same per-sample
clip norm (``clip_norm``, passed as ``--clip-norm``; fedlora clips only under DP). Federated
cells pass the server learning rate as ``--server-lr``: ``server_learning_rate``, or when that
is ``None`` fedlora's own default for the cell (3 for FFA-LoRA under DP, else 1); uniform
weighting, and ``--bf16 off`` by default (bfloat16 autocast, which ``auto`` turns on for this
CPU, measured about 5× slower than float32 here). δ = 1e-5 for every DP cell (passed as
``--delta 1e-5``; it equals fedlora's default min(1e-5, 1/N) here since no node holds 10^5
records). DP sampling and noise come from OS entropy (the library default), so a rerun with
the same seed differs slightly in its DP cells.

Data (read from ``--data-root``, default ``../shared/data``; nothing is copied for the full
study). A data set with a test file of its own is tested on it (``fedlora train --eval FILE``,
``fedlora sim --test-data FILE``: all of the training file trains); one without is split by a
seeded stratified hold-out of its one file (``fedlora train --eval-fraction F --seed K``,
``fedlora sim --test-fraction F --seed K``, both through ``sim.splits.stratified_split`` on
the same label ids). Either way the centralized and the federated cells of one seed are
tested on exactly the same records:

- BANKING77: the official train/test split, ``banking77/train.csv`` (10,003 queries, 77
  intents, columns ``text`` and ``category``) for training and ``banking77/test.csv`` (3,080
  queries, same columns) for testing.
- medical_abstracts: ``medical_abstracts/medical_tc_test.csv`` (the only file of that corpus
  available here: 2,888 abstracts, columns ``condition_label`` 1-5 and ``medical_abstract``;
  labels 1 neoplasms, 2 digestive system diseases, 3 nervous system diseases,
  4 cardiovascular diseases, 5 general pathological conditions, from
  ``medical_tc_labels.csv``), split 80/20 → 2,310 train / 578 test. 113 abstracts occur
  with more than one label upstream; they are kept as they are (some label noise, and a
  repeated abstract can fall on both sides of the split). Its labels are the digits ``1``-``5``,
  so the prototype head starts from the embeddings of those digits, not of the condition
  names.

The seed ``K`` of a cell seeds the model's initialisation, the partitioning and, for a data
set without a test file, the test split alike (the ``fedlora`` commands take one ``--seed``);
seed 0 is the run the study reports first, further seeds repeat it (on other splits where the
split is seeded).

Columns: ``data set``, ``cell``, ``setting``; ``seeds`` (how many finished); ``before``
(accuracy of the untrained model on the test split: the zero-shot accuracy of the prototype
head, about chance for the linear head; ``fedlora train``'s ``initial_accuracy``, ``fedlora
sim``'s round-0 ``initial.accuracy``); ``accuracy`` and ``macro-F1`` on the test split after
training (mean ± sample std over seeds when more than one; ``before`` is the mean); ``ε max``
/ ``ε min`` (the ε each node actually spent, max and min over the nodes and seeds: the last
entry of each node's privacy ledger for ``fedlora sim``, ``metrics.json`` ``epsilon`` for
``fedlora train``; PRV accountant, δ = 1e-5; ``∞`` without DP); ``wall`` (mean wall time of
one seed: data preparation, model loading, training, every evaluation and, for federated
cells, Ray start-up). A ``†`` marks a federated cell with a round that did not complete.
``utility.json`` has the same rows with, besides, each cell's ``target_epsilon``, ``head``,
``lora``, ``federated`` and ``partition`` (``None`` for centralized cells).

Outputs (``--out``, default ``runs/utility``, or ``runs/utility-quick`` with ``--quick``):
``cells/<data set>/<cell>/seed-<k>/result.json`` (written atomically when the cell is done:
metrics, ε per node, wall time, the settings and the exact command), ``.../run/`` (the
command's own output directory: metrics.json, adapter, ledgers, audit report),
``.../log.txt``; ``utility.json`` and ``utility.md`` (the table, the settings and the
commands, ready for docs/results.md), rebuilt after every cell from whatever cells are
finished (missing ones shown as "–"). A rerun skips finished cells (``--force`` redoes
them); a result written under other settings (plan, cell, data files and their digests) is
reported as stale and left alone.

``--quick`` changes: a stratified subsample (seed 0) of each data set of about 1,000 records,
750 train + 250 test: for a data set with a test file, 750 records of its training file and
250 of its test file, written to ``OUT/data/<data set>/quick-train.csv`` and
``quick-test.csv``; otherwise 1,000 records of its one file, written to
``OUT/data/<data set>/quick-pool.csv`` and split as in the full study (the only derived
copies of the data, made for this mode only); ``max_length`` 32; batch size 16 for
centralized and node-local training alike (``fedlora sim`` redraws a Dirichlet partition
until every node holds at least one batch, which 750 medical abstracts in 10 nodes do not
reliably allow at 32); 1 round of 1 local epoch (1 epoch centralized); only the cells
``central-nodp``, ``central-dp8`` and ``fed-dp8`` unless ``--cells`` names others.
Everything else (model, learning rate, clip norm, 10 nodes, SecAgg+, δ) is as in the full
study. It checks the machinery, not the science: on 750 records and one epoch the numbers are
far from converged (DP cells near chance, or near the zero-shot accuracy with the prototype
head). It takes about 2 minutes on this machine's 2 cores when nothing else runs, and several
times longer beside other CPU-bound jobs (torch's threads then wait on each other).

Usage: ``python bench/utility.py [--quick] [--list] [--datasets ...] [--cells ...]
[--seeds ...] [--force] [--bf16 auto|on|off] [--out DIR] [--data-root DIR] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from client.run_settings import (
    SERVER_LR_UNDER_DP,
    SERVER_LR_WITHOUT_DP,
    default_server_learning_rate,
)
from client.training_config import ModelConfig
from privacy.accounting import format_epsilon
from privacy.durable_io import write_json_atomic, write_text_atomic
from sim.splits import stratified_split

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
DELTA = 1e-5
QUICK_SAMPLE_SEED = 0
RESULT_FILE = "result.json"
MISSING = "–"
NO_DP = "∞"


@dataclass(frozen=True)
class DatasetSpec:
    """One data set of the study.

    Parameters
    ----------
    name
        Name used in the output paths and the table.
    source
        The training file, relative to the data root (also the test split's file when
        ``test_source`` is ``None``).
    text_column, label_column
        Its columns.
    labels
        Fixed label set passed as ``--labels`` (``None``: inferred, sorted, by both commands).
    test_fraction
        Stratified share of ``source`` held out as the test split (full study), when there is
        no ``test_source``.
    test_source
        A separate test file with the same columns, relative to the data root (``fedlora train
        --eval``, ``fedlora sim --test-data``); ``None``: hold out ``test_fraction``.
    label_descriptions
        Public label-name file passed as ``--label-descriptions`` (relative to the data root):
        the text the prototype head's class vectors start from when labels are codes.
    written_descriptions
        Public descriptions written for this study from the label names alone (relative to
        the repository; no record was read to write them), used by the ``desc`` cells.
    max_node_batch_size
        The largest node batch its federated cells use (``None``: the plan's). A node must
        hold at least one batch, and a small data set's Dirichlet nodes cannot all hold the
        plan's (:func:`node_batch_size`).
    """

    name: str
    source: str
    text_column: str
    label_column: str
    labels: tuple[str, ...] | None
    test_fraction: float | None
    test_source: str | None = None
    label_descriptions: str | None = None
    written_descriptions: str | None = None
    max_node_batch_size: int | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "banking77",
            "banking77/train.csv",
            "text",
            "category",
            None,
            None,
            test_source="banking77/test.csv",
            written_descriptions="bench/label_descriptions/banking77.json",
        ),
        DatasetSpec(
            "medical_abstracts",
            "medical_abstracts/medical_tc_test.csv",
            "medical_abstract",
            "condition_label",
            ("1", "2", "3", "4", "5"),
            0.2,
            label_descriptions="medical_abstracts/medical_tc_labels.csv",
            # 2,310 training records in 10 Dirichlet(0.5) nodes over 5 classes: on one such
            # draw batch 128 filled every node in 2 of 10 partition seeds and 64 in 10 of 10;
            # at 32 the study's seed-0 nodes hold 63-557 records (q at most 0.51).
            max_node_batch_size=32,
        ),
    )
}


@dataclass(frozen=True)
class Cell:
    """One setting of the study.

    Parameters
    ----------
    name
        Short name (output path, ``--cells``).
    federated
        ``fedlora sim`` (10 nodes) rather than ``fedlora train`` (one institution).
    epsilon
        Target ε (per node when federated); ``None`` trains without DP.
    partition
        ``fedlora sim --partition`` (federated cells only).
    lora
        ``ffa`` (FFA-LoRA, the default) or ``lora``.
    head
        ``--head``: ``prototype`` (class vectors from the label names' embeddings, a
        zero-shot prior; the default) or ``linear`` (random, no prior).
    descriptions
        The prototype head starts from the data set's ``written_descriptions`` instead of
        its label names (only data sets that have them run such a cell).
    epoch_factor
        Passes over the data as a multiple of the plan's (rounds of a federated cell, epochs
        of a centralized one): longer training at the same ε, hence more noise per step.
    node_batch_size
        This cell's node batch instead of the plan's (federated cells; a data set's
        ``max_node_batch_size`` still caps it).
    head_refit
        Whether ``fedlora train`` ends with its default head refit (a full-batch DP fit of
        the class vectors that shares the cell's ε); ``False`` passes
        ``--head-refit-steps 0``. It applies only where ``fedlora train`` refits: centralized
        DP cells with the prototype head (:attr:`applies_head_refit`).
    """

    name: str
    federated: bool
    epsilon: float | None
    partition: str = "dirichlet:0.5"
    lora: str = "ffa"
    head: str = "prototype"
    descriptions: bool = False
    epoch_factor: int = 1
    node_batch_size: int | None = None
    head_refit: bool = True

    @property
    def applies_head_refit(self) -> bool:
        """Whether ``head_refit`` means anything here: centralized, DP, prototype head."""
        return not self.federated and self.epsilon is not None and self.head == "prototype"

    def describe(self) -> str:
        """A human-readable description of the setting."""
        where = "centralized" if not self.federated else f"10 nodes, {self._partition_text()}"
        lora = "FFA-LoRA" if self.lora == "ffa" else "LoRA"
        dp = "no DP" if self.epsilon is None else f"DP ε={self.epsilon:g}"
        head = ", no prior (linear head)" if self.head == "linear" else ""
        if self.descriptions:
            head = ", prior from written label descriptions"
        longer = f", {self.epoch_factor}× the epochs" if self.epoch_factor != 1 else ""
        batch = f", node batch {self.node_batch_size}" if self.node_batch_size else ""
        refit = ", no head refit" if self.applies_head_refit and not self.head_refit else ""
        return f"{where}, {lora}, {dp}{head}{longer}{batch}{refit}"

    def runs_on(self, spec: DatasetSpec) -> bool:
        """Whether this cell applies to the data set (a ``desc`` cell needs descriptions)."""
        return not self.descriptions or spec.written_descriptions is not None

    def _partition_text(self) -> str:
        kind, _, alpha = self.partition.partition(":")
        return f"Dirichlet α={alpha}" if kind == "dirichlet" else kind.upper()


CELLS: tuple[Cell, ...] = (
    Cell("central-nodp", False, None),
    Cell("central-dp1", False, 1.0),
    Cell("central-dp3", False, 3.0),
    Cell("central-dp8", False, 8.0),
    Cell("central-dp1-norefit", False, 1.0, head_refit=False),
    Cell("central-dp8-norefit", False, 8.0, head_refit=False),
    Cell("central-lora-dp8", False, 8.0, lora="lora"),
    Cell("central-linear-nodp", False, None, head="linear"),
    Cell("central-linear-dp1", False, 1.0, head="linear"),
    Cell("central-linear-dp3", False, 3.0, head="linear"),
    Cell("central-linear-dp8", False, 8.0, head="linear"),
    Cell("fed-nodp", True, None),
    Cell("fed-dp1", True, 1.0),
    Cell("fed-dp3", True, 3.0),
    Cell("fed-dp8", True, 8.0),
    Cell("fed-lora-dp8", True, 8.0, lora="lora"),
    Cell("fed-iid-dp8", True, 8.0, partition="iid"),
    Cell("fed-linear-dp8", True, 8.0, head="linear"),
    Cell("central-desc-dp1", False, 1.0, descriptions=True),
    Cell("central-desc-dp8", False, 8.0, descriptions=True),
    Cell("fed-desc-dp8", True, 8.0, descriptions=True),
    # twice the steps at the same ε: federated at the node batch the sweep found best there
    Cell("central-dp8-x2", False, 8.0, epoch_factor=2),
    Cell("fed-nodp-x2", True, None, epoch_factor=2, node_batch_size=256),
    Cell("fed-dp8-x2", True, 8.0, epoch_factor=2, node_batch_size=256),
    Cell("fed-nodp-x3", True, None, epoch_factor=3, node_batch_size=256),
    Cell("fed-dp8-x3", True, 8.0, epoch_factor=3, node_batch_size=256),
)
#: Cell fields that count in a result's settings only away from their defaults, so results
#: from before a field existed stay comparable.
LATER_CELL_FIELDS = ("descriptions", "epoch_factor", "node_batch_size")
CELLS_BY_NAME = {cell.name: cell for cell in CELLS}
QUICK_CELLS: tuple[str, ...] = ("central-nodp", "central-dp8", "fed-dp8")


@dataclass(frozen=True)
class Plan:
    """Settings shared by every cell (the values in force: :data:`FULL_PLAN`,
    :data:`QUICK_PLAN`).

    Parameters
    ----------
    quick
        The ``--quick`` variant (subsampled data, short runs).
    model, max_length
        ``--model`` and ``--max-length`` of both commands.
    rounds, local_epochs
        Federated rounds and local epochs per round; centralized cells train
        ``rounds × local_epochs`` epochs.
    central_batch_size
        Expected (Poisson under DP) batch size of ``fedlora train``.
    node_batch_size
        Expected batch size of each node's local training in ``fedlora sim``.
    learning_rate
        Adam learning rate (``--lr``) of both commands.
    server_learning_rate
        ``--server-lr`` of the federated cells (the global adapter moves by this times the
        mean node delta); ``None``: fedlora's default for the cell's DP setting.
    clip_norm
        Per-sample clipping norm (``--clip-norm``) of the DP cells.
    bf16
        ``--bf16`` of both commands: ``off`` by default, as bfloat16 autocast measured about
        5× slower than float32 on this machine's CPU (AVX512-BF16, so ``auto`` turns it on).
    nodes, nodes_per_round
        Federation size and nodes sampled per round.
    quick_records
        Records kept per data set by ``--quick`` (train + test); 0 in the full study.
    quick_test
        Of those, the test records.
    """

    quick: bool
    model: str
    max_length: int
    rounds: int
    local_epochs: int
    central_batch_size: int
    node_batch_size: int
    learning_rate: float
    server_learning_rate: float | None
    clip_norm: float
    bf16: str
    nodes: int = 10
    nodes_per_round: int = 10
    quick_records: int = 0
    quick_test: int = 0

    @property
    def central_epochs(self) -> int:
        """Epochs of a centralized cell: the same passes over the data as a federated one."""
        return self.rounds * self.local_epochs


#: The full study's settings: change them here (every result under other settings turns stale).
FULL_PLAN = Plan(
    quick=False,
    model="default",
    max_length=128,
    rounds=3,
    local_epochs=1,
    central_batch_size=256,
    node_batch_size=128,  # with server lr 3: bench/sweep.py --federated (docs/results.md)
    learning_rate=0.01,
    server_learning_rate=None,
    clip_norm=1.0,
    bf16="off",
)
#: ``--quick``: the full plan on a small subsample, short texts, one round, small batches.
QUICK_PLAN = dataclasses.replace(
    FULL_PLAN,
    quick=True,
    max_length=32,
    rounds=1,
    local_epochs=1,
    central_batch_size=16,
    node_batch_size=16,
    quick_records=1000,
    quick_test=250,
)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Pool:
    """The files a cell's command reads: its training data and its test data.

    Parameters
    ----------
    path
        The training file (the source itself, or the ``--quick`` subsample); without a test
        file, also the file the test split is held out of.
    source
        The data set's training file under the data root.
    test_fraction
        ``--eval-fraction`` / ``--test-fraction``; ``None`` when there is a test file.
    records
        Records in ``path``.
    test_records
        Test records: in ``test_path``, or in the test split (seed 0) of ``path``.
    words
        Word count of every record of ``path`` (for the cost estimate).
    test_words
        Word count of every test record (of ``test_path``, or of the seed-0 split).
    rows
        The records (text, label) of ``path``.
    sha256
        Digest of ``source`` (a changed source makes earlier results stale).
    test_path
        The test file (the test source itself, or its ``--quick`` subsample); ``None``: a
        hold-out of ``path``.
    test_source
        The data set's test file under the data root, if it has one.
    test_rows
        The records of ``test_path`` (empty without one).
    test_sha256
        Digest of ``test_source`` (``None`` without one).
    label_descriptions
        The data set's label-name file, if it has one.
    """

    path: Path
    source: Path
    test_fraction: float | None
    records: int
    test_records: int
    words: tuple[int, ...]
    test_words: tuple[int, ...]
    rows: tuple[tuple[str, str], ...]
    sha256: str
    test_path: Path | None = None
    test_source: Path | None = None
    test_rows: tuple[tuple[str, str], ...] = ()
    test_sha256: str | None = None
    label_descriptions: Path | None = None

    @property
    def derived(self) -> bool:
        """Whether ``path`` (and ``test_path``) is a subsample written by this script."""
        return self.path != self.source

    @property
    def train_records(self) -> int:
        """Records the cells train on (seed 0 for a hold-out split)."""
        return self.records if self.test_path is not None else self.records - self.test_records


def _read_rows(path: Path, spec: DatasetSpec) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {spec.text_column, spec.label_column} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: no column(s) {sorted(missing)}")
        return [(row[spec.text_column], row[spec.label_column]) for row in reader]


def _label_ids(rows: Sequence[tuple[str, str]], spec: DatasetSpec) -> np.ndarray:
    labels = spec.labels or tuple(sorted({label for _, label in rows}))
    index = {label: i for i, label in enumerate(labels)}
    return np.asarray([index[label] for _, label in rows], dtype=np.int64)


def _subsample(
    rows: Sequence[tuple[str, str]], spec: DatasetSpec, keep: int
) -> list[tuple[str, str]]:
    """A stratified, seeded subsample of about ``keep`` records (``--quick``)."""
    if keep >= len(rows):
        return list(rows)
    _, kept = stratified_split(_label_ids(rows, spec), keep / len(rows), QUICK_SAMPLE_SEED)
    return [rows[i] for i in kept]


def _words(rows: Sequence[tuple[str, str]]) -> tuple[int, ...]:
    return tuple(len(text.split()) for text, _ in rows)


def _require(path: Path, spec: DatasetSpec) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data set {spec.name} not found (see --data-root)")
    return path


def load_pool(spec: DatasetSpec, plan: Plan, data_root: Path, out: Path) -> Pool:
    """The data a data set's cells read (``--quick``: its stratified subsamples, not written).

    Raises
    ------
    FileNotFoundError
        If the data set (or its test file) is not under ``data_root``.
    """
    source = _require(data_root / spec.source, spec)
    rows = _read_rows(source, spec)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    folder = out / "data" / spec.name
    descriptions = (
        _require(data_root / spec.label_descriptions, spec) if spec.label_descriptions else None
    )
    if spec.test_source is not None:
        test_source = _require(data_root / spec.test_source, spec)
        test_rows = _read_rows(test_source, spec)
        path, test_path = source, test_source
        if plan.quick:
            rows = _subsample(rows, spec, plan.quick_records - plan.quick_test)
            test_rows = _subsample(test_rows, spec, plan.quick_test)
            path, test_path = folder / "quick-train.csv", folder / "quick-test.csv"
        return Pool(
            path=path,
            source=source,
            test_fraction=None,
            records=len(rows),
            test_records=len(test_rows),
            words=_words(rows),
            test_words=_words(test_rows),
            rows=tuple(rows),
            sha256=sha256,
            test_path=test_path,
            test_source=test_source,
            test_rows=tuple(test_rows),
            test_sha256=hashlib.sha256(test_source.read_bytes()).hexdigest(),
            label_descriptions=descriptions,
        )
    if spec.test_fraction is None:
        raise ValueError(f"data set {spec.name}: neither a test file nor a test fraction")
    path, fraction = source, spec.test_fraction
    if plan.quick:
        rows = _subsample(rows, spec, plan.quick_records)
        path = folder / "quick-pool.csv"
        fraction = plan.quick_test / len(rows)
    _, test = stratified_split(_label_ids(rows, spec), fraction, 0)
    return Pool(
        path=path,
        source=source,
        test_fraction=fraction,
        records=len(rows),
        test_records=len(test),
        words=_words(rows),
        test_words=tuple(_words(rows)[i] for i in test),
        rows=tuple(rows),
        sha256=sha256,
        label_descriptions=descriptions,
    )


def _write_csv(path: Path, spec: DatasetSpec, rows: Sequence[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([spec.text_column, spec.label_column])
    writer.writerows(rows)
    text = buffer.getvalue()
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def write_pool(pool: Pool, spec: DatasetSpec) -> None:
    """Write the ``--quick`` subsamples (atomically; the full study writes nothing)."""
    if not pool.derived:
        return
    _write_csv(pool.path, spec, pool.rows)
    if pool.test_path is not None:
        _write_csv(pool.test_path, spec, pool.test_rows)


# ---------------------------------------------------------------------------- cells


def _number(value: float) -> str:
    """A float as the shortest text that reads back to the same value."""
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _path_arg(path: Path) -> str:
    """``path`` as a command-line argument, relative to the working directory if possible."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def _flags(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
    """``[("--a", "1"), ("--b", None)]`` → ``["--a", "1", "--b"]``."""
    return [text for flag, value in pairs for text in (flag, value) if text is not None]


def server_learning_rate(plan: Plan, cell: Cell) -> float:
    """The server learning rate of a federated cell: the plan's, else fedlora's default."""
    if plan.server_learning_rate is not None:
        return plan.server_learning_rate
    return default_server_learning_rate(cell.epsilon is not None, cell.lora)


def cell_argv(
    cell: Cell, spec: DatasetSpec, plan: Plan, pool: Pool, seed: int, run_dir: Path
) -> list[str]:
    """The ``fedlora`` arguments (without the program name) of one cell and seed."""
    data = [("--data", _path_arg(pool.path))]
    if pool.test_path is not None:
        data.append(("--test-data" if cell.federated else "--eval", _path_arg(pool.test_path)))
    else:
        assert pool.test_fraction is not None
        held = "--test-fraction" if cell.federated else "--eval-fraction"
        data.append((held, _number(pool.test_fraction)))
    data += [("--text-column", spec.text_column), ("--label-column", spec.label_column)]
    if spec.labels is not None:
        data.append(("--labels", ",".join(spec.labels)))
    federation = [
        ("--nodes", str(plan.nodes)),
        ("--nodes-per-round", str(plan.nodes_per_round)),
        ("--partition", cell.partition),
        ("--rounds", str(plan.rounds * cell.epoch_factor)),
        ("--local-epochs", str(plan.local_epochs)),
        ("--server-lr", _number(server_learning_rate(plan, cell))),
    ]
    model = [("--model", plan.model), ("--head", cell.head), ("--lora", cell.lora)]
    descriptions = pool.label_descriptions
    if cell.descriptions:
        if spec.written_descriptions is None:
            raise ValueError(f"cell {cell.name}: data set {spec.name} has no written descriptions")
        descriptions = REPO / spec.written_descriptions
    if descriptions is not None and cell.head == "prototype":
        model.append(("--label-descriptions", _path_arg(descriptions)))
    model.append(("--max-length", str(plan.max_length)))
    dp: list[tuple[str, str | None]] = [("--no-dp", None)]
    if cell.epsilon is not None:
        dp = [("--epsilon", _number(cell.epsilon)), ("--delta", _number(DELTA))]
        dp.append(("--clip-norm", _number(plan.clip_norm)))
        if cell.applies_head_refit and not cell.head_refit:
            dp.append(("--head-refit-steps", "0"))
    batch = node_batch_size(plan, spec, cell) if cell.federated else plan.central_batch_size
    opt = [("--batch-size", str(batch)), ("--lr", _number(plan.learning_rate))]
    opt += [("--bf16", plan.bf16), ("--seed", str(seed))]
    if cell.federated:
        return [
            "sim",
            *_flags([*data, *federation, *model, *dp, *opt, ("--out", _path_arg(run_dir))]),
        ]
    epochs = [("--epochs", str(plan.central_epochs * cell.epoch_factor))]
    out = [("--out", _path_arg(run_dir)), ("--quiet", None)]
    return ["train", *_flags([*data, *model, *dp, *epochs, *opt, *out])]


def node_batch_size(plan: Plan, spec: DatasetSpec, cell: Cell | None = None) -> int:
    """The node batch of a federated cell on ``spec``: the cell's or else the plan's, capped
    by the data set's."""
    batch = plan.node_batch_size
    if cell is not None and cell.node_batch_size is not None:
        batch = cell.node_batch_size
    if spec.max_node_batch_size is None:
        return batch
    return min(batch, spec.max_node_batch_size)


def cell_settings(cell: Cell, spec: DatasetSpec, plan: Plan, pool: Pool, seed: int) -> dict:
    """What makes a result comparable: a finished result under other settings is stale.

    The fields of :data:`LATER_CELL_FIELDS` count only away from their defaults, written
    descriptions only for the cells that use them, a data set's node-batch cap only for its
    federated cells (results from before any of them existed stay comparable)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Cell)}
    cell_fields = {
        name: value
        for name, value in dataclasses.asdict(cell).items()
        if name not in LATER_CELL_FIELDS or value != defaults[name]
    }
    if not cell.applies_head_refit:  # results from before the refit stay comparable
        del cell_fields["head_refit"]
    dataset_fields = dataclasses.asdict(spec)
    if not cell.descriptions:
        del dataset_fields["written_descriptions"]
    elif spec.written_descriptions is not None:  # a rewritten file makes its results stale
        written = (REPO / spec.written_descriptions).read_bytes()
        dataset_fields["written_descriptions_sha256"] = hashlib.sha256(written).hexdigest()
    if not cell.federated or spec.max_node_batch_size is None:
        del dataset_fields["max_node_batch_size"]
    return {
        "plan": dataclasses.asdict(plan),
        "cell": cell_fields,
        "dataset": dataset_fields,
        "data": {
            "source": spec.source,
            "source_sha256": pool.sha256,
            "records": pool.records,
            "test_fraction": pool.test_fraction,
            "test_source": spec.test_source,
            "test_sha256": pool.test_sha256,
            "test_records": pool.test_records,
        },
        "delta": None if cell.epsilon is None else DELTA,
        "seed": seed,
        # what the cells do not pass on the command line comes from fedlora's defaults
        "model_defaults": dataclasses.asdict(ModelConfig()),
    }


def seed_dir(out: Path, dataset: str, cell: str, seed: int) -> Path:
    """Where one cell and seed keeps its result, log and run directory."""
    return out / "cells" / dataset / cell / f"seed-{seed}"


def read_result(path: Path) -> dict[str, Any] | None:
    """A finished cell's result, or ``None`` when there is none (or it is unreadable)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) else None


def _same_settings(result: dict[str, Any], settings: dict[str, Any]) -> bool:
    return bool(
        json.dumps(result.get("settings"), sort_keys=True) == json.dumps(settings, sort_keys=True)
    )


# ---------------------------------------------------------------------------- run


def execute(argv: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run one ``fedlora train`` / ``fedlora sim`` command line in this process.

    The arguments go through the ``fedlora`` parser and the same configuration and job
    functions as the command itself.

    Returns
    -------
    dict
        The command's ``metrics.json``.
    """
    from sim.cli import build_parser, sim_config_from_args, train_job_from_args

    args = build_parser().parse_args(list(argv))
    if args.command == "train":
        from sim.train_job import run_train_job

        return run_train_job(train_job_from_args(args), log=log)
    from sim.simulation import launch_simulation, prepare_simulation

    config = sim_config_from_args(args)
    prepared = prepare_simulation(config, log=log)
    return launch_simulation(prepared, config.cpus_per_node, log=log)


def _ledger_epsilons(run_dir: Path) -> tuple[dict[str, float], set[float]]:
    """Each node's cumulative ε from the last entry of its ledger (0 for a node with none),
    and the δ values found."""
    from privacy.ledger import read_ledger

    index = json.loads((run_dir / "partitions" / "index.json").read_text(encoding="utf-8"))
    epsilons: dict[str, float] = {}
    deltas: set[float] = set()
    for entry in index:
        name = str(entry["node"])
        path = run_dir / "ledgers" / f"{name}.jsonl"
        entries = read_ledger(path) if path.is_file() else []
        epsilons[name] = entries[-1].epsilon if entries else 0.0
        deltas.update(e.delta for e in entries)
    return epsilons, deltas


def summarise(cell: Cell, metrics: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Accuracy, macro-F1 and the ε spent, from a finished command's outputs."""
    if not cell.federated:
        epsilon = metrics.get("epsilon")
        return {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "initial_accuracy": metrics.get("initial_accuracy"),
            "epsilon_per_node": None if epsilon is None else {"central": epsilon},
            "epsilon_source": "metrics.json epsilon" if epsilon is not None else None,
            "delta": metrics.get("delta"),
            "train_examples": metrics.get("train_examples"),
            "test_examples": metrics.get("eval_examples"),
            "completed_rounds": None,
            "stopped_nodes": {},
        }
    final = metrics.get("final") or {}
    per_node: dict[str, float] | None = None
    delta: float | None = None
    source = None
    if cell.epsilon is not None:
        per_node, deltas = _ledger_epsilons(run_dir)
        delta = max(deltas) if deltas else None
        source = "last entry of each node's ledger (PRV)"
    test_examples = _csv_records(run_dir / "test.csv")
    sizes = [_csv_records(path) for path in _node_files(run_dir)]
    return {
        "accuracy": final.get("accuracy"),
        "macro_f1": final.get("macro_f1"),
        "initial_accuracy": (metrics.get("initial") or {}).get("accuracy"),
        "epsilon_per_node": per_node,
        "epsilon_per_node_metrics": final.get("epsilon"),
        "epsilon_source": source,
        "delta": delta,
        "train_examples": sum(sizes),
        "node_examples": sizes,
        "test_examples": test_examples,
        "completed_rounds": final.get("completed_rounds"),
        "stopped_nodes": metrics.get("stopped_nodes", {}),
    }


def _csv_records(path: Path) -> int:
    """Records of a CSV file with a header (texts may span lines)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def _node_files(run_dir: Path) -> list[Path]:
    index = json.loads((run_dir / "partitions" / "index.json").read_text(encoding="utf-8"))
    return [run_dir / "partitions" / str(entry["file"]) for entry in index]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_cell(
    cell: Cell, spec: DatasetSpec, plan: Plan, pool: Pool, seed: int, out: Path
) -> dict[str, Any]:
    """Run one cell and seed from scratch and write its ``result.json`` atomically."""
    import shutil

    folder = seed_dir(out, spec.name, cell.name, seed)
    run_dir = folder / "run"
    if run_dir.exists():  # an interrupted attempt: its ledgers must not count again
        shutil.rmtree(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    argv = cell_argv(cell, spec, plan, pool, seed, run_dir)
    command = "fedlora " + shlex.join(argv)
    tag = f"{spec.name}/{cell.name}/seed-{seed}"
    log_path = folder / "log.txt"
    with log_path.open("w", encoding="utf-8") as log_file:

        def log(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()
            print(f"    [{tag}] {message}", file=sys.stderr, flush=True)

        log(f"$ {command}")
        started, load_before = _utc_now(), os.getloadavg()[0]
        start = time.perf_counter()
        metrics = execute(argv, log)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()[0]
    result = {
        "benchmark": "utility",
        "dataset": spec.name,
        "cell": cell.name,
        "description": cell.describe(),
        "seed": seed,
        "kind": "federated" if cell.federated else "centralized",
        "command": command,
        "cwd": str(Path.cwd()),
        "run_dir": _path_arg(run_dir),
        "target_epsilon": cell.epsilon,
        **summarise(cell, metrics, run_dir),
        "planned_rounds": plan.rounds * cell.epoch_factor if cell.federated else None,
        "wall_seconds": wall,
        "started": started,
        "finished": _utc_now(),
        "load_average": [load_before, load_after],
        "cpus": os.cpu_count(),
        "settings": cell_settings(cell, spec, plan, pool, seed),
    }
    per_node = result["epsilon_per_node"]
    result["epsilon_max"] = max(per_node.values()) if per_node else None
    result["epsilon_min"] = min(per_node.values()) if per_node else None
    write_json_atomic(folder / RESULT_FILE, result)
    return result


# ------------------------------------------------------------------------ estimate

#: Cost model of one cell, fitted to cells measured on this machine (2 cores, nothing else
#: running; 20 DP-SGD steps of each data set at max_length 128, and the ``--quick`` cells):
#: seconds = fixed overhead + training example-tokens × per-token cost + evaluation
#: example-tokens × per-token cost (+ per node and round for federated cells). A record has
#: about min(max_length, 1.35·words + 2) tokens and a batch is padded to its longest record,
#: so a batch costs its size × the expected longest record of such a batch. Beside other
#: CPU-bound jobs every figure can be several times higher (measured: 3×).
COST_CENTRAL_OVERHEAD_S = 4.0
COST_SIM_OVERHEAD_S = 8.0
COST_NODE_ROUND_S = 2.0  # per node and round, over the cores (actor, model build, σ, SecAgg+)
COST_TRAIN_TOKEN_S = {False: 3.8e-4, True: 4.0e-4}  # per padded token, without / with DP
COST_LORA_FACTOR = 1.1  # plain LoRA trains A too
COST_EVAL_TOKEN_S = 1.2e-4
EVAL_BATCH = 128  # client.evaluation.evaluate's default batch size


def padded_tokens(words: Sequence[int], max_length: int, batch: int) -> float:
    """Expected padded length of a batch of ``batch`` random records (Monte Carlo, seeded)."""
    tokens = np.minimum(float(max_length), 1.35 * np.asarray(words, dtype=float) + 2)
    picks = np.random.default_rng(0).integers(0, len(tokens), size=(200, min(batch, len(tokens))))
    return float(tokens[picks].max(axis=1).mean())


def estimate_seconds(cell: Cell, spec: DatasetSpec, plan: Plan, pool: Pool) -> float:
    """Rough wall time of one cell and seed on this machine (see the cost constants)."""
    train = pool.train_records
    per_token = COST_TRAIN_TOKEN_S[cell.epsilon is not None]
    if cell.lora == "lora":
        per_token *= COST_LORA_FACTOR
    rounds = plan.rounds * cell.epoch_factor
    if cell.federated:  # each node's batches are drawn from its own share only
        batch = min(node_batch_size(plan, spec, cell), max(1, train // plan.nodes))
    else:
        batch = plan.central_batch_size
    tokens = padded_tokens(pool.words, plan.max_length, batch)
    seconds = train * plan.central_epochs * cell.epoch_factor * tokens * per_token
    cpus = max(1, os.cpu_count() or 1)
    if cell.federated:
        evaluations = rounds + 2  # before training, after each round, final
        seconds += COST_SIM_OVERHEAD_S + COST_NODE_ROUND_S * plan.nodes * rounds / cpus
    else:
        evaluations = 2
        seconds += COST_CENTRAL_OVERHEAD_S
    eval_tokens = padded_tokens(pool.test_words, plan.max_length, EVAL_BATCH)
    return seconds + evaluations * pool.test_records * eval_tokens * COST_EVAL_TOKEN_S


# --------------------------------------------------------------------------- table


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _format_metric(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def collect(
    out: Path, plan: Plan, pools: dict[str, Pool]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per data set and cell from the finished results under ``out`` (all seeds on
    disk whose settings match ``plan``), and the paths of stale results."""
    rows: list[dict[str, Any]] = []
    stale: list[str] = []
    for name, spec in DATASETS.items():
        for cell in CELLS:
            results = []
            folder = out / "cells" / name / cell.name
            seed_folders = sorted(folder.glob("seed-*")) if folder.is_dir() else []
            for sub in seed_folders:
                result = read_result(sub / RESULT_FILE)
                if result is None:
                    continue
                pool = pools.get(name)
                if pool is None:  # data set not available: its results cannot be checked
                    continue
                if not _same_settings(
                    result, cell_settings(cell, spec, plan, pool, int(result["seed"]))
                ):
                    stale.append(_path_arg(sub / RESULT_FILE))
                    continue
                results.append(result)
            rows.append(_row(name, cell, results))
    return rows, stale


def _row(dataset: str, cell: Cell, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dataset": dataset,
        "cell": cell.name,
        "description": cell.describe(),
        "seeds": sorted(int(r["seed"]) for r in results),
        "target_epsilon": cell.epsilon,
        "head": cell.head,
        "lora": cell.lora,
        "federated": cell.federated,
        "partition": cell.partition if cell.federated else None,
    }
    for key in ("accuracy", "macro_f1", "wall_seconds"):
        values = [float(r[key]) for r in results if r.get(key) is not None]
        mean, std = _mean_std(values) if values else (None, None)
        row[key], row[f"{key}_std"] = mean, std
    initial = [
        float(r["initial_accuracy"]) for r in results if r.get("initial_accuracy") is not None
    ]
    row["initial_accuracy"] = statistics.fmean(initial) if initial else None
    maxima = [r["epsilon_max"] for r in results if r.get("epsilon_max") is not None]
    minima = [r["epsilon_min"] for r in results if r.get("epsilon_min") is not None]
    row["epsilon_max"] = max(maxima) if maxima else None
    row["epsilon_min"] = min(minima) if minima else None
    deltas = {r["delta"] for r in results if r.get("delta") is not None}
    row["delta"] = deltas.pop() if len(deltas) == 1 else (sorted(deltas) or None)
    row["incomplete"] = any(
        r.get("completed_rounds") is not None and r["completed_rounds"] < r["planned_rounds"]
        for r in results
    )
    row["commands"] = {str(r["seed"]): r["command"] for r in results}
    return row


TABLE_COLUMNS: tuple[str, ...] = (
    *("data set", "cell", "setting", "seeds", "before", "accuracy", "macro-F1"),
    *("ε max", "ε min", "wall"),
)


def _cells_text(row: dict[str, Any]) -> list[str]:
    mark = " †" if row["incomplete"] else ""
    eps = [
        MISSING if row[k] is None else format_epsilon(row[k], 3)
        for k in ("epsilon_max", "epsilon_min")
    ]
    if row["seeds"] and row["epsilon_max"] is None:
        eps = [NO_DP, NO_DP]
    return [
        row["dataset"],
        row["cell"],
        row["description"],
        str(len(row["seeds"])) if row["seeds"] else MISSING,
        _format_metric(row["initial_accuracy"], None),
        _format_metric(row["accuracy"], row["accuracy_std"]) + (mark if row["seeds"] else ""),
        _format_metric(row["macro_f1"], row["macro_f1_std"]),
        *eps,
        _format_seconds(row["wall_seconds"]),
    ]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The plain-text table printed on stdout."""
    cells = [list(TABLE_COLUMNS)] + [_cells_text(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)) for line in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def _data_text(name: str, pool: Pool) -> str:
    spec = DATASETS[name]
    sample = "a stratified subsample of " if pool.derived else ""
    if spec.test_source is not None:
        return (
            f"{name}: {pool.train_records} train records from {sample}{spec.source}, "
            f"{pool.test_records} test records from {sample}{spec.test_source} (official split)"
        )
    return (
        f"{name}: {pool.train_records} train / {pool.test_records} test records (seed 0), "
        f"seeded stratified hold-out of {sample}{spec.source}"
    )


#: fedlora's model defaults: what the cells do not set on the command line.
MODEL = ModelConfig()


def _server_lr_text(plan: Plan) -> str:
    if plan.server_learning_rate is not None:
        return f"{plan.server_learning_rate:g}"
    return f"{SERVER_LR_UNDER_DP:g} under DP, {SERVER_LR_WITHOUT_DP:g} without"


def settings_text(plan: Plan, pools: dict[str, Pool]) -> str:
    """One paragraph on what every cell shares."""
    data = "; ".join(_data_text(name, pool) for name, pool in pools.items())
    capped = [
        f"{name}: {node_batch_size(plan, DATASETS[name])}"
        for name in pools
        if node_batch_size(plan, DATASETS[name]) != plan.node_batch_size
    ]
    node_batch = f"{plan.node_batch_size}" + (f" ({', '.join(capped)})" if capped else "")
    return (
        f"{'--quick: ' if plan.quick else ''}model {plan.model} (FFA-LoRA and the prototype "
        "head, its class vectors starting from the label names' embeddings, unless stated; "
        f"LoRA rank {MODEL.rank}, {'+'.join(MODEL.target_modules)}, class vectors stored at "
        f"norm {MODEL.prototype_norm:g}), max_length {plan.max_length}, Adam lr "
        f"{plan.learning_rate:g}, bf16 {plan.bf16}; federated: {plan.nodes} nodes, "
        f"{plan.nodes_per_round} per round, {plan.rounds} round(s) × {plan.local_epochs} "
        f"local epoch(s), batch size {node_batch}, server lr "
        f"{_server_lr_text(plan)}, SecAgg+ on; centralized: "
        f"{plan.central_epochs} epoch(s), batch size {plan.central_batch_size}; DP: "
        f"δ = {DELTA:g}, PRV accountant, clip norm {plan.clip_norm:g}. Data: {data}."
    )


def format_markdown(rows: Sequence[dict[str, Any]], plan: Plan, pools: dict[str, Pool]) -> str:
    """``utility.md``: the table, the shared settings and each finished cell's command."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cells_text(row)) + " |")
    text = "\n".join(lines) + "\n\n" + settings_text(plan, pools) + "\n"
    text += (
        "\nbefore: accuracy of the untrained model (zero-shot for the prototype head, about "
        "chance for the linear head), mean over seeds. Accuracy and macro-F1 on the test split "
        "after training (mean ± sample std over seeds when more than one); ε max / ε min: the "
        "ε each node actually spent (ledgers; "
        "`metrics.json` for centralized runs), over nodes and seeds; wall: mean per seed. "
        f"{NO_DP}: no DP. {MISSING}: not run yet. † a round did not complete.\n"
    )
    commands = [
        (row["dataset"], row["cell"], seed, command)
        for row in rows
        for seed, command in sorted(row["commands"].items())
    ]
    if commands:
        text += "\nCommands (run from the repository root):\n\n```bash\n"
        for dataset, cell, seed, command in commands:
            text += f"# {dataset} / {cell} / seed {seed}\n{command}\n"
        text += "```\n"
    return text


def write_outputs(
    out: Path, plan: Plan, pools: dict[str, Pool], json_path: Path | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rebuild ``utility.json`` and ``utility.md`` from the finished cells."""
    rows, stale = collect(out, plan, pools)
    payload = {
        "benchmark": "utility",
        "plan": dataclasses.asdict(plan),
        "delta": DELTA,
        "settings": settings_text(plan, pools),
        "datasets": {
            name: {
                "source": DATASETS[name].source,
                "file": _path_arg(pool.path),
                "records": pool.records,
                "train_records": pool.train_records,
                "test_source": DATASETS[name].test_source,
                "test_file": None if pool.test_path is None else _path_arg(pool.test_path),
                "test_records": pool.test_records,
                "test_fraction": pool.test_fraction,
                "test_split": "test file" if pool.test_path is not None else "seeded hold-out",
            }
            for name, pool in pools.items()
        },
        "cpus": os.cpu_count(),
        "rows": rows,
        "stale_results": stale,
    }
    write_json_atomic(out / "utility.json", payload)
    write_text_atomic(out / "utility.md", format_markdown(rows, plan, pools))
    if json_path is not None:
        write_json_atomic(json_path, payload)
    return rows, stale


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="The utility study (issue #6, benchmark 4): accuracy and macro-F1, before "
        "and after training, of centralized and federated DP-LoRA on BANKING77 (official "
        "train/test split) and medical abstracts (seeded 80/20 hold-out), with the ε each node "
        "spent, across ε, LoRA variant, partition and head (prototype: zero-shot prior from "
        "the label names; linear: no prior). Resumable: finished cells are skipped.",
        epilog="examples:\n"
        "  python bench/utility.py --quick                      # smoke run, ~2 min idle\n"
        "  python bench/utility.py --list                       # the plan and its cost\n"
        "  python bench/utility.py --datasets banking77 --cells central-dp8 --seeds 0\n"
        "  python bench/utility.py --seeds 0 1 2                # the whole study, 3 seeds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about 750 train / 250 test records per data set (stratified subsamples; "
        "BANKING77's of its train and test files), max_length 32, batch size 16, 1 round, "
        f"cells {', '.join(QUICK_CELLS)} unless --cells says otherwise",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=tuple(DATASETS),
        metavar="NAME",
        help=f"data sets to run: {', '.join(DATASETS)} (default: all)",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        choices=tuple(CELLS_BY_NAME),
        metavar="NAME",
        help=f"cells to run: {', '.join(CELLS_BY_NAME)} (default: all)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], metavar="K", help="seeds (default: 0)"
    )
    parser.add_argument("--force", action="store_true", help="redo finished cells")
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="off",
        help="bfloat16 autocast in every cell (default off: about 5x slower than float32 on "
        "this machine's CPU)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the cell plan with cost estimates and stop"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output directory (default: runs/utility, or runs/utility-quick with --quick)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=DEFAULT_DATA_ROOT,
        help=f"where the data sets live (default: {_path_arg(DEFAULT_DATA_ROOT)})",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the table as JSON to PATH"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO / "runs" / ("utility-quick" if args.quick else "utility")
    if args.datasets is None:
        args.datasets = list(DATASETS)
    if args.cells is None:
        args.cells = list(QUICK_CELLS) if args.quick else [cell.name for cell in CELLS]
    if any(seed < 0 for seed in args.seeds):
        parser.error("--seeds must be >= 0")
    args.seeds = sorted(set(args.seeds))
    return args


def print_plan(
    selected: Sequence[tuple[DatasetSpec, Cell]], plan: Plan, pools: dict[str, Pool], args: Any
) -> None:
    """``--list``: every selected cell and seed, its status (``done``; ``todo``; ``stale``: a
    result under other settings, which a run skips unless ``--force``) and its estimated cost."""
    print(settings_text(plan, pools))
    names = max([len("cell")] + [len(cell.name) for _, cell in selected])
    settings = max([len("setting")] + [len(cell.describe()) for _, cell in selected])
    seeds = max(len("seeds"), len(" ".join(f"{seed}:stale" for seed in args.seeds)))
    header = (
        f"{'data set':<18} {'cell':<{names}} {'setting':<{settings}} {'seeds':<{seeds}} "
        f"{'estimate/seed':>13} {'measured/seed':>13}"
    )
    print(header)
    print("-" * len(header))
    todo, stale = 0.0, 0
    for spec, cell in selected:
        pool = pools[spec.name]
        estimate = estimate_seconds(cell, spec, plan, pool)
        status, measured = [], []
        for seed in args.seeds:
            result = read_result(seed_dir(args.out, spec.name, cell.name, seed) / RESULT_FILE)
            settings_now = cell_settings(cell, spec, plan, pool, seed)
            same = result is not None and _same_settings(result, settings_now)
            if result is not None and same:
                measured.append(float(result["wall_seconds"]))
            if same and not args.force:
                status.append(f"{seed}:done")
            elif result is not None and not same and not args.force:
                status.append(f"{seed}:stale")  # skipped: other settings, not replaced
                stale += 1
            else:
                status.append(f"{seed}:todo")
                todo += estimate
        took = _format_seconds(statistics.fmean(measured)) if measured else MISSING
        print(
            f"{spec.name:<18} {cell.name:<{names}} {cell.describe():<{settings}} "
            f"{' '.join(status):<{seeds}} {_format_seconds(estimate):>13} {took:>13}"
        )
    print(f"estimated time of the cells still to run: {_format_seconds(todo)}")
    if stale:
        print(
            f"{stale} stale result(s) (other settings) will be skipped, not rerun: "
            "use another --out, or --force to replace them (not in the estimate)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected cells (skipping finished ones) and print the table."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    plan = dataclasses.replace(QUICK_PLAN if args.quick else FULL_PLAN, bf16=args.bf16)
    out: Path = args.out.resolve()
    args.out = out
    pools = {
        name: load_pool(spec, plan, args.data_root.resolve(), out)
        for name, spec in DATASETS.items()
        if (args.data_root / spec.source).is_file() or name in args.datasets
    }
    selected = [
        (DATASETS[d], CELLS_BY_NAME[c])
        for d in args.datasets
        for c in args.cells
        if CELLS_BY_NAME[c].runs_on(DATASETS[d])
    ]
    if args.list:
        print_plan(selected, plan, pools, args)
        return 0
    from sim.cli import quiet_libraries

    quiet_libraries()
    failures = []
    for spec, cell in selected:
        pool = pools[spec.name]
        write_pool(pool, spec)
        for seed in args.seeds:
            tag = f"{spec.name}/{cell.name}/seed-{seed}"
            path = seed_dir(out, spec.name, cell.name, seed) / RESULT_FILE
            result = read_result(path)
            settings = cell_settings(cell, spec, plan, pool, seed)
            if result is not None and not args.force:
                if _same_settings(result, settings):
                    print(f"  skip: {tag} (finished)", file=sys.stderr)
                else:
                    print(
                        f"  skip: {tag}: {_path_arg(path)} holds a result under other "
                        "settings; use another --out, or --force to replace it",
                        file=sys.stderr,
                    )
                continue
            estimate = estimate_seconds(cell, spec, plan, pool)
            print(
                f"  run:  {tag} (estimate {_format_seconds(estimate)})",
                file=sys.stderr,
                flush=True,
            )
            try:
                result = run_cell(cell, spec, plan, pool, seed, out)
            except KeyboardInterrupt:
                print(
                    f"  interrupted: {tag}; finished cells are kept, rerun to continue",
                    file=sys.stderr,
                )
                write_outputs(out, plan, pools, args.json)
                return 130
            except Exception as exc:  # one failed cell must not lose the others
                failures.append(tag)
                print(f"  FAILED: {tag}: {exc!r}", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                continue
            print(
                f"  done: {tag} in {_format_seconds(result['wall_seconds'])}: accuracy "
                f"{_format_metric(result['initial_accuracy'], None)} before, "
                f"{_format_metric(result['accuracy'], None)} after, macro-F1 "
                f"{_format_metric(result['macro_f1'], None)}",
                file=sys.stderr,
                flush=True,
            )
            write_outputs(out, plan, pools, None)
    rows, stale = write_outputs(out, plan, pools, args.json)
    load = os.getloadavg()[0]
    print(
        f"utility study{' (--quick)' if plan.quick else ''}, {os.cpu_count()} CPUs, load "
        f"average {load:.1f} at the end; results in {_path_arg(out)}"
    )
    print(settings_text(plan, pools))
    print(format_table(rows))
    for stale_path in stale:
        print(f"stale (other settings, not shown): {stale_path}", file=sys.stderr)
    if failures:
        print(f"failed cells: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
