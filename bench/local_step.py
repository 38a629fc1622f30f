"""Benchmark: local training throughput of one node, with and without DP-SGD.

Why it exists (issue #6, benchmark 1): a node's training round costs what its local steps
cost, and the project's defaults (bf16 autocast where the CPU has it, pad-to-longest batches,
Opacus hooks) were chosen for speed. This measures examples/s of the default model
(all-MiniLM-L6-v2, FFA-LoRA r=8 on query,value, linear head) on BANKING77 texts for every
combination of

- dtype: ``fp32`` or ``bf16`` (autocast of the forward pass, ``TrainConfig.bf16``);
- padding: ``fixed128`` (every batch padded to 128 tokens), ``longest`` (each batch padded
  to its longest record, in one pass) or ``sorted`` (what nodes do: each batch sorted by
  length and run as physical batches of at most ``TrainConfig.physical_batch_tokens`` padded
  tokens, each padded to its own longest record; not offered for ``ghost``);
- DP: ``none``, ``hooks`` (DP-SGD, Opacus per-sample gradients by hooks, the default) or
  ``ghost`` (DP-SGD, Opacus ghost clipping),

and checks two targets of the issue: DP-SGD (hooks) step time ≤ 1.15× the non-private
step, and pad-to-longest + bf16 ≥ 3× the throughput of fixed-128 + fp32.

How it measures. ``none`` and ``hooks`` run :func:`client.dp_training.train_adapter` itself
(one epoch over a data sample of ``batch size × (warm-up + timed steps)`` records; the
non-private run draws shuffled batches of exactly B, DP-SGD Poisson batches of expected size
B, as in production; σ = 1, RDP accountant, fixed ``noise_seed``). A step is the interval
between two calls of its ``progress`` callback: sampling, batching, forward, backward,
clipping, noise and the Adam step. The batch builder that ``train_adapter`` calls is
wrapped (``unittest.mock.patch``) to record each batch's size and width and, for
``fixed128``, to pad to 128 tokens: ``train_adapter`` has no padding option.
``train_adapter`` does not offer ghost clipping, so ``ghost`` rows come from a minimal,
separate loop in this script (:func:`run_ghost`) that uses Opacus' own API
(``make_private(..., grad_sample_mode="ghost")`` and the criterion it returns), the same
model, batches, autocast, Poisson sampling and seed; empty Poisson batches are skipped there.
Ghost clipping computes its norms in the dtype of the backprops (Opacus casts the
activations to it), without the float32 fix of ``train_adapter``, so bf16 ghost rows are a
speed measurement only. A configuration that raises is shown as ``unsupported: <reason>``.
All configurations use the same data sample, the process is warmed up once (one untimed
step per dtype and padding) and repeats are interleaved (repeat 1 of every configuration,
then repeat 2, ...), so that a change of load on the machine hits all of them alike. On a
shared machine, run it when the load average is below about 1.5.

Columns: ``ex/s`` (examples per second over the timed steps; median of repeats, a repeat's
value being its examples / its time), ``ms/step`` (median over repeats of the mean timed
step), ``tok`` (mean padded tokens per step), ``×best`` (throughput relative to the fastest
configuration), ``DP step×`` (DP rows: throughput of the non-private row of the same dtype and
padding divided by this row's, i.e. the step-time ratio at equal examples per step; the
target is ≤ 1.15 for ``hooks``), ``GFLOP/s`` (achieved model FLOP/s) and ``%peak`` (achieved
over the measured matmul peak of the same dtype) and ``cpu%`` (CPU time of this process over
wall time × torch threads during the timed steps: well below 100% means the cores were
shared with other processes, or time went to single-threaded Python; the 1-minute load
average is sampled after every run and its maximum is printed). FLOPs per step are those of
the plain model's forward + backward on the step's batch shape, counted by
``torch.utils.flop_counter.FlopCounterMode`` (per example: an exact quadratic in the padded
width, fitted on three widths); per-sample-gradient and clipping work of DP-SGD is not
counted, so it shows up as a lower utilisation. Fallback when counting fails:
4 × encoder parameters (without embeddings) × tokens (forward 2, backward 2 for activation
gradients; frozen weights get no weight gradients). The matmul peak is the best of several
``torch.matmul`` runs on square matrices, measured at the start and at the end of the run.

Usage: ``python bench/local_step.py [--quick] [--json PATH] [--data CSV]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import client.dp_training as dp_training
from client.batching import Batch, TokenizedTexts, make_batch, tokenize_texts
from client.data_loading import DataConfig, load_labelled_texts
from client.dp_training import (
    DPConfig,
    IndexDataset,
    TrainConfig,
    batch_indices,
    bf16_supported,
    train_adapter,
)
from client.model import ModelConfig, TextClassifier, build_model, load_tokenizer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/banking77/train.csv"
FIXED_WIDTH = 128
NOISE_MULTIPLIER = 1.0
CLIP_NORM = 1.0
DTYPES: tuple[str, ...] = ("fp32", "bf16")
PADDINGS: tuple[str, ...] = ("fixed128", "longest", "sorted")
#: A physical-batch token budget no batch reaches: one forward/backward pass per batch.
ONE_PASS = 10**9
DP_MODES: tuple[str, ...] = ("none", "hooks", "ghost")
DP_TARGET = 1.15
PAD_BF16_TARGET = 3.0
#: Load average above CPUs + this margin means other processes competed for the CPUs.
BUSY_LOAD_MARGIN = 0.75


@dataclass(frozen=True)
class Setting:
    """One benchmarked configuration."""

    dtype: str
    padding: str
    dp: str

    @property
    def name(self) -> str:
        """``dtype/padding/dp``, e.g. ``bf16/longest/hooks``."""
        return f"{self.dtype}/{self.padding}/{self.dp}"

    @property
    def pad_to(self) -> int | None:
        """Width every batch is padded to, or None for pad-to-longest."""
        return FIXED_WIDTH if self.padding == "fixed128" else None

    @property
    def physical_batch_tokens(self) -> int:
        """``sorted``: train_adapter's default length-sorted physical batches; else one pass."""
        return TrainConfig().physical_batch_tokens if self.padding == "sorted" else ONE_PASS


@dataclass
class StepLog:
    """What the steps of one run took: at each step's end the wall clock and the process'
    CPU time, and the examples and padded width of each physical batch of each step (one
    per step, except with length-sorted physical batches)."""

    ends: list[float] = field(default_factory=list)
    cpu_ends: list[float] = field(default_factory=list)
    steps: list[list[tuple[int, int]]] = field(default_factory=list)
    current: list[tuple[int, int]] = field(default_factory=list)

    def batch_built(self, examples: int, width: int) -> None:
        """Record one physical batch of the step under way."""
        self.current.append((examples, width))

    def step_ended(self) -> None:
        """Record the end of a step."""
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.steps.append(self.current)
        self.current = []

    def timed(self, warmup: int) -> list[tuple[float, list[tuple[int, int]]]]:
        """(seconds, [(examples, width) per physical batch]) of each step after ``warmup``."""
        return [
            (self.ends[i] - self.ends[i - 1], self.steps[i])
            for i in range(max(warmup, 1), len(self.ends))
        ]

    def cpu_share(self, warmup: int) -> float:
        """CPU seconds of the process over wall seconds × torch threads, in the timed steps."""
        first = max(warmup, 1) - 1
        wall = self.ends[-1] - self.ends[first]
        cpu = self.cpu_ends[-1] - self.cpu_ends[first]
        return cpu / (wall * torch.get_num_threads())


@contextmanager
def recorded_batches(log: StepLog, pad_to: int | None) -> Iterator[None]:
    """Make ``train_adapter`` pad to ``pad_to`` and record each batch it builds in ``log``."""

    def recording_make_batch(
        data: TokenizedTexts,
        indices: Sequence[int] | np.ndarray | torch.Tensor,
        pad_to_: int | None = None,
    ) -> Batch:
        batch = make_batch(data, indices, pad_to=pad_to)
        log.batch_built(len(batch), int(batch.input_ids.shape[1]))
        return batch

    with mock.patch.object(dp_training, "make_batch", recording_make_batch):
        yield


def run_train_adapter(
    model: TextClassifier, data: TokenizedTexts, setting: Setting, batch_size: int, seed: int
) -> StepLog:
    """One epoch of :func:`client.dp_training.train_adapter` over ``data``, step by step."""
    log = StepLog()
    train = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        bf16=setting.dtype == "bf16",
        noise_seed=seed,
        physical_batch_tokens=setting.physical_batch_tokens,
    )
    dp = DPConfig(
        enabled=setting.dp != "none",
        noise_multiplier=NOISE_MULTIPLIER,
        clip_norm=CLIP_NORM,
        accountant="rdp",
        grad_sample_mode="hooks",
    )
    with recorded_batches(log, setting.pad_to):
        train_adapter(model, data, train, dp, progress=lambda *_: log.step_ended())
    return log


def run_ghost(
    model: TextClassifier, data: TokenizedTexts, setting: Setting, batch_size: int, seed: int
) -> StepLog:
    """One epoch of DP-SGD with Opacus ghost clipping: a measurement loop, not training code.

    Mirrors ``train_adapter`` (Adam, Poisson sampling at rate B/N, σ, C, autocast, float32
    loss) but uses the criterion returned by ``make_private(grad_sample_mode="ghost")``,
    whose ``backward()`` runs Opacus' two backward passes. Empty Poisson batches are skipped
    (``train_adapter`` would take a noise-only step).
    """
    from opacus import PrivacyEngine

    if setting.padding == "sorted":
        raise ValueError("this ghost-clipping loop has no length-sorted physical batches")
    log = StepLog()
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=TrainConfig().learning_rate)
    loader: DataLoader[tuple[int]] = DataLoader(
        IndexDataset(len(data)), batch_size=batch_size, generator=generator
    )
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, criterion, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=CLIP_NORM,
        poisson_sampling=True,
        grad_sample_mode="ghost",
        noise_generator=generator,
    )
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if setting.dtype == "bf16" else nullcontext()
    )
    private.train()
    try:
        for collated in loader:
            indices = batch_indices(collated)
            if indices.numel() == 0:
                continue
            batch = make_batch(data, indices, pad_to=setting.pad_to)
            with autocast:
                logits = private(batch.input_ids, batch.attention_mask)
            loss = criterion(logits.float(), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.batch_built(len(batch), int(batch.input_ids.shape[1]))
            log.step_ended()
    finally:
        private._close()
    model.train()
    return log


def run_setting(
    model: TextClassifier, data: TokenizedTexts, setting: Setting, batch_size: int, seed: int
) -> StepLog:
    """One measured run of ``setting``."""
    runner = run_ghost if setting.dp == "ghost" else run_train_adapter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the (largest|smallest)")
        return runner(model, data, setting, batch_size, seed)


def warm_up_process(model: TextClassifier, data: TokenizedTexts, batch_size: int) -> None:
    """One untimed forward + backward per dtype and padding before any measurement.

    The first steps of a fresh process were seen to be slower here (memory allocation and
    oneDNN primitive creation are likely causes); without this, whichever configuration
    runs first would pay for it.
    """
    for dtype in DTYPES:
        for pad_to in (FIXED_WIDTH, None):
            batch = make_batch(data, np.arange(min(batch_size, len(data))), pad_to=pad_to)
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
            )
            with autocast:
                logits = model(batch.input_ids, batch.attention_mask)
            nn.functional.cross_entropy(logits.float(), batch.labels).backward()
            model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- FLOPs


def matmul_peak(dtype: torch.dtype, sizes: Sequence[int], repeats: int) -> tuple[float, int]:
    """Best FLOP/s of ``torch.matmul`` on square ``n × n`` matrices, and the best ``n``."""
    best, best_n = 0.0, sizes[0]
    generator = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=generator).to(dtype)
        b = torch.randn(n, n, generator=generator).to(dtype)
        torch.matmul(a, b)  # warm-up (library initialisation, primitive creation)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            rate = 2.0 * n**3 / (time.perf_counter() - start)
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def _counted_flops(model: TextClassifier, width: int, batch: int = 2) -> float:
    """FLOPs of one forward + backward of the plain model on a ``batch × width`` input."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.full((batch, width), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    labels = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        loss = nn.functional.cross_entropy(model(ids, mask), labels)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) / batch


def flops_per_example(model: TextClassifier) -> tuple[Callable[[int], float], str]:
    """Training FLOPs per example as a function of the padded width, and how it was got.

    Linear layers cost ∝ width and attention ∝ width², so three counted widths fit the
    per-example cost exactly; on failure, 4 × encoder parameters (embeddings excluded) ×
    width.
    """
    try:
        widths = (16, 64, 128)
        counts = [_counted_flops(model, w) for w in widths]
        coefficients = np.polyfit(np.array(widths, dtype=float), np.array(counts), 2)
        return (lambda w: float(np.polyval(coefficients, w))), "FlopCounterMode"
    except Exception as exc:  # a fallback estimate is better than no column
        params = sum(
            p.numel() for n, p in model.named_parameters() if "embeddings" not in n.split(".")
        )
        reason = f"4·params·tokens ({type(exc).__name__} counting FLOPs)"
        return (lambda w: 4.0 * params * w), reason


# ---------------------------------------------------------------- data, summary, table


def load_sample(path: Path, records: int, max_length: int, seed: int) -> tuple[TokenizedTexts, int]:
    """``records`` texts drawn at random (fixed seed) from the BANKING77 CSV, tokenized, and
    the number of labels of the whole file."""
    texts = load_labelled_texts(path, DataConfig(text_column="text", label_column="category"))
    if records > len(texts):
        raise SystemExit(f"{path} has {len(texts)} records, the benchmark needs {records}")
    picks = np.random.default_rng(seed).choice(len(texts), size=records, replace=False)
    tokenizer = load_tokenizer(ModelConfig().model)
    sample = tokenize_texts(
        tokenizer,
        [texts.texts[i] for i in picks],
        [texts.label_ids[i] for i in picks],
        max_length,
    )
    return sample, len(texts.labels)


def summarise(
    setting: Setting,
    logs: Sequence[StepLog],
    warmup: int,
    flops: Callable[[int], float],
    peaks: dict[str, float],
) -> dict[str, Any]:
    """A result row from the runs of one setting."""
    rates, step_s, tokens, flop_rates = [], [], [], []
    for log in logs:
        steps = log.timed(warmup)
        seconds = sum(s for s, _ in steps)
        chunks = [chunk for _, batches in steps for chunk in batches]
        rates.append(sum(e for e, _ in chunks) / seconds)
        step_s.append(seconds / len(steps))
        tokens.append(sum(e * w for e, w in chunks) / len(steps))
        flop_rates.append(sum(e * flops(w) for e, w in chunks) / seconds)
    achieved = statistics.median(flop_rates)
    return {
        "name": setting.name,
        "dtype": setting.dtype,
        "padding": setting.padding,
        "dp": setting.dp,
        "status": "ok",
        "examples_per_s": statistics.median(rates),
        "examples_per_s_repeats": rates,
        "step_ms": 1000 * statistics.median(step_s),
        "padded_tokens_per_step": statistics.fmean(tokens),
        "timed_steps": len(logs[0].timed(warmup)),
        "achieved_flops": achieved,
        "cpu_share": statistics.median(log.cpu_share(warmup) for log in logs),
        "cpu_share_repeats": [log.cpu_share(warmup) for log in logs],
        "fraction_of_peak": achieved / peaks[setting.dtype],
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill ``vs_fastest`` and, for DP rows, ``dp_step_ratio`` (non-private ex/s over DP ex/s)."""
    ok = {row["name"]: row for row in rows if row["status"] == "ok"}
    fastest = max((row["examples_per_s"] for row in ok.values()), default=float("nan"))
    for row in rows:
        row["vs_fastest"] = row["examples_per_s"] / fastest if row["status"] == "ok" else None
        base = ok.get(f"{row['dtype']}/{row['padding']}/none")
        row["dp_step_ratio"] = (
            base["examples_per_s"] / row["examples_per_s"]
            if row["dp"] != "none" and row["status"] == "ok" and base is not None
            else None
        )


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's two targets, measured (one line per DP mode for the padding target)."""
    ok = {row["name"]: row for row in rows if row["status"] == "ok"}
    out = []
    for dtype in DTYPES:
        for padding in PADDINGS:
            row = ok.get(f"{dtype}/{padding}/hooks")
            if row is not None:
                out.append(
                    {
                        "target": f"DP-SGD hooks step ≤ {DP_TARGET}× non-private "
                        f"({dtype}, {padding})",
                        "measured": row["dp_step_ratio"],
                        "holds": row["dp_step_ratio"] <= DP_TARGET,
                    }
                )
    for padding in ("longest", "sorted"):
        for dp in DP_MODES:
            fast, slow = ok.get(f"bf16/{padding}/{dp}"), ok.get(f"fp32/fixed128/{dp}")
            if fast is not None and slow is not None:
                ratio = fast["examples_per_s"] / slow["examples_per_s"]
                out.append(
                    {
                        "target": f"bf16 + {padding} ≥ {PAD_BF16_TARGET}× fp32 + fixed128 "
                        f"(DP {dp})",
                        "measured": ratio,
                        "holds": ratio >= PAD_BF16_TARGET,
                    }
                )
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The result rows as a fixed-width table."""
    header = (
        f"{'dtype':<5} {'padding':<8} {'DP':<5} {'ex/s':>7} {'ms/step':>8} {'tok':>6} "
        f"{'×best':>6} {'DP step×':>8} {'GFLOP/s':>8} {'%peak':>6} {'cpu%':>5}"
    )
    out = [header, "-" * len(header)]
    for row in rows:
        head = f"{row['dtype']:<5} {row['padding']:<8} {row['dp']:<5}"
        if row["status"] != "ok":
            out.append(f"{head} {row['status']}")
            continue
        ratio = "–" if row["dp_step_ratio"] is None else f"{row['dp_step_ratio']:.2f}"
        out.append(
            f"{head} {row['examples_per_s']:>7.1f} {row['step_ms']:>8.0f} "
            f"{row['padded_tokens_per_step']:>6.0f} {row['vs_fastest']:>6.2f} {ratio:>8} "
            f"{row['achieved_flops'] / 1e9:>8.1f} {100 * row['fraction_of_peak']:>5.1f}% "
            f"{100 * row['cpu_share']:>4.0f}%"
        )
    return "\n".join(out)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time local training steps of the default model on BANKING77: "
        "{fp32, bf16} × {fixed 128, pad-to-longest} × {no DP, DP hooks, DP ghost}.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch 32, 1 warm-up + 3 timed steps, 1 repeat (about a minute on 2 idle cores)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"BANKING77 train CSV with columns text, category (default {DEFAULT_DATA})",
    )
    parser.add_argument("--batch-size", type=int, help="(expected) batch size (default 64)")
    parser.add_argument("--warmup", type=int, help="untimed steps per run (default 2)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 6)")
    parser.add_argument("--repeats", type=int, help="runs per configuration (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="only these configurations, e.g. bf16/longest/hooks",
    )
    parser.add_argument("--seed", type=int, default=0, help="data sample and DP noise seed")
    args = parser.parse_args(argv)
    quick = {"batch_size": 32, "warmup": 1, "steps": 3, "repeats": 1}
    full = {"batch_size": 64, "warmup": 2, "steps": 6, "repeats": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.batch_size, args.warmup, args.steps, args.repeats) < 1:
        parser.error("--batch-size, --warmup, --steps and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table (and write JSON when asked)."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()
    settings = [Setting(t, p, d) for t in DTYPES for p in PADDINGS for d in DP_MODES]
    if args.only:
        settings = [s for s in settings if s.name in args.only]
        if not settings:
            raise SystemExit(f"no configuration named {args.only}")
    peak_sizes = (1024,) if args.quick else (512, 1024, 2048)
    peak_repeats = 3 if args.quick else 5
    peaks: dict[str, float] = {}
    peak_n: dict[str, int] = {}

    def measure_peaks() -> None:
        # Best of the start and the end of the run: a busy moment only lowers one of them.
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rate, n = matmul_peak(dtype, peak_sizes, peak_repeats)
            if rate > peaks.get(name, 0.0):
                peaks[name], peak_n[name] = rate, n

    measure_peaks()
    print(f"  matmul peak measured ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    config = ModelConfig()
    data, num_labels = load_sample(
        args.data, args.batch_size * (args.warmup + args.steps), config.max_length, args.seed
    )
    model = build_model(config, [f"class {i}" for i in range(num_labels)])
    flops, flop_method = flops_per_example(model)
    warm_up_process(model, data, args.batch_size)

    logs: dict[Setting, list[StepLog]] = {s: [] for s in settings}
    failures: dict[Setting, str] = {}
    loads = [load_start[0]]
    for repeat in range(args.repeats):
        for setting in settings:
            if setting in failures:
                continue
            try:
                logs[setting].append(run_setting(model, data, setting, args.batch_size, args.seed))
            except Exception as exc:  # ghost clipping may not support the model
                if setting.dp != "ghost":
                    raise
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                failures[setting] = f"unsupported: {type(exc).__name__}: {reason}"[:160]
            loads.append(os.getloadavg()[0])
            print(
                f"  repeat {repeat + 1}/{args.repeats} {setting.name} "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    measure_peaks()
    rows: list[dict[str, Any]] = []
    for setting in settings:
        if setting in failures:
            rows.append(
                {
                    "name": setting.name,
                    "dtype": setting.dtype,
                    "padding": setting.padding,
                    "dp": setting.dp,
                    "status": failures[setting],
                }
            )
        else:
            rows.append(summarise(setting, logs[setting], args.warmup, flops, peaks))
    add_ratios(rows)
    checks = targets(rows)
    load_end = os.getloadavg()
    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16_native": bf16_supported(),
        "load_average_start": load_start[0],
        "load_average_end": load_end[0],
        "load_average_max": max(loads),
    }
    print(
        f"local training steps: {config.model} model, {config.lora} r={config.rank} on "
        f"{','.join(config.target_modules)}, batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.steps} timed steps × {args.repeats} repeats, σ={NOISE_MULTIPLIER}, "
        f"C={CLIP_NORM}"
    )
    print(
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs ({machine['torch_threads']} torch "
        f"threads), torch {machine['torch']}, "
        f"bf16 autocast by default (AMX): {machine['bf16_native']}, "
        f"load average {load_start[0]:.2f} at start, {max(loads):.2f} at most, "
        f"{load_end[0]:.2f} at end"
    )
    print(
        f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s (n={peak_n['fp32']}), "
        f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s (n={peak_n['bf16']}); "
        f"model FLOPs by {flop_method}: {flops(FIXED_WIDTH) / 1e9:.2f} GFLOP per example "
        f"at width {FIXED_WIDTH}"
    )
    print(format_table(rows))
    busy = (os.cpu_count() or 1) + BUSY_LOAD_MARGIN
    if max(loads) > busy:
        print(
            f"warning: the load average reached {max(loads):.2f} (this benchmark alone makes "
            f"about {torch.get_num_threads()}): other processes shared the CPUs, timings and "
            "ratios are unreliable; see examples_per_s_repeats in the JSON"
        )
    for check in checks:
        verdict = "holds" if check["holds"] else "FAILS"
        print(f"target: {check['target']}: measured {check['measured']:.2f}× — {verdict}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        payload = {
            "benchmark": "local training step",
            "model": config.model,
            "lora": config.lora,
            "rank": config.rank,
            "target_modules": list(config.target_modules),
            "data": str(args.data),
            "batch_size": args.batch_size,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "noise_multiplier": NOISE_MULTIPLIER,
            "clip_norm": CLIP_NORM,
            "seed": args.seed,
            "machine": machine,
            "matmul_peak_flops": peaks,
            "matmul_peak_size": peak_n,
            "flop_method": flop_method,
            "flops_per_example_at_128": flops(FIXED_WIDTH),
            "rows": rows,
            "targets": checks,
            "seconds": time.perf_counter() - started,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
