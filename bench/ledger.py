"""Benchmark: how long verifying a privacy ledger takes as it grows.

Why it exists: every ledger entry records a cumulative ε. ``verify_ledger`` checks every
entry's hash, chain link, signature and RDP ε (recomputed) and recomputes the PRV ε of the
last entry (the total spent); ``--full`` recomputes the PRV ε of every entry. This measures
both for ledgers of 10, 100, 1,000 and 10,000 entries with realistic events: runs of 50
rounds, each run with one of a few (σ, q) settings (a node keeps σ fixed within a run), a
fixed number of DP-SGD steps per round.

Columns: ``integrity`` (parse, hashes, chain and signatures of all entries), ``verify``
(the default verification, cold: integrity + every RDP ε + the final PRV ε), ``full 1w`` /
``full Nw`` (``--full`` verification, cold, in one process / N processes) and ``ε final``.
Every memo of ``privacy.accounting`` and ``privacy.rdp_memo`` is emptied before each cold
timing. Sizes above ``--exact-max`` are not built with exact intermediate PRV values (that
costs as much as a full verification): their intermediate PRV ε is filled with
min(RDP ε, final PRV ε), which the default verification accepts and does not recompute, so
its timing is unaffected; their full-verification time is *estimated* as integrity time +
entries × mean per-entry recomputation time measured on ``--samples`` evenly spaced
entries, and marked ``est.``.

Usage: ``python bench/ledger.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy import accounting, rdp_memo
from privacy.accounting import DPEvent, compute_epsilon, format_epsilon
from privacy.audit import event_histories, history_events, recompute_epsilons, verify_ledger
from privacy.ledger import GENESIS_HASH, dataset_fingerprint, make_entry, scan_ledger
from privacy.reference_accounting import pld_epsilon

DELTA = 1e-5
ROUNDS_PER_RUN = 50
#: A few (σ, q) settings, as nodes recalibrate σ per run; runs cycle through them.
SETTINGS: tuple[tuple[float, float], ...] = ((2.0, 0.01), (2.5, 0.02), (1.8, 0.01))

T = TypeVar("T")


def realistic_events(entries: int, steps_per_entry: int) -> list[DPEvent]:
    """``entries`` spends: runs of ``ROUNDS_PER_RUN`` rounds cycling through ``SETTINGS``."""
    return [
        DPEvent(*SETTINGS[(index // ROUNDS_PER_RUN) % len(SETTINGS)], steps_per_entry)
        for index in range(entries)
    ]


def _forget_accounting_memo() -> None:
    """Empty every in-process memo of the accounting modules so that cold timings are cold."""
    for module in (accounting, rdp_memo):
        for value in vars(module).values():
            clear = getattr(value, "cache_clear", None)
            if callable(clear):
                clear()


def _timed(action: Callable[[], T]) -> tuple[T, float]:
    """``action()`` and its wall time, starting without memoised ε values."""
    _forget_accounting_memo()
    start = time.perf_counter()
    value = action()
    return value, time.perf_counter() - start


def write_ledger(
    path: Path,
    events: Sequence[DPEvent],
    key: Ed25519PrivateKey,
    epsilons: Sequence[tuple[float, float]],
) -> None:
    """Write a signed, chained ledger of ``events`` with the given (PRV ε, RDP ε) per entry."""
    fingerprint = dataset_fingerprint(["bench"], ["bench"])
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    prev, lines = GENESIS_HASH, []
    for index, (event, (prv, rdp)) in enumerate(zip(events, epsilons, strict=True)):
        entry = make_entry(
            prev_hash=prev,
            node_id="bench-node",
            dataset_fingerprint=fingerprint,
            run_id=f"run-{index // ROUNDS_PER_RUN}",
            round=index % ROUNDS_PER_RUN,
            event=event,
            clip_norm=1.0,
            delta=DELTA,
            budget_epsilon=50.0,
            epsilon=prv,
            epsilon_rdp=rdp,
            timestamp=start + timedelta(minutes=index),
            signing_key=key,
        )
        lines.append(entry.to_json_line())
        prev = entry.hash
    path.write_text("".join(lines), encoding="ascii")


def ledger_epsilons(
    events: Sequence[DPEvent], exact: bool, workers: int
) -> list[tuple[float, float]]:
    """(PRV ε, RDP ε) per entry: exact everywhere, or exact RDP and final PRV with the
    intermediate PRV ε filled in as min(RDP ε, final PRV ε) (see the module docstring)."""
    histories = event_histories(events)
    if exact:
        cache = recompute_epsilons(histories, DELTA, workers=workers)
        return [cache[(history, DELTA)] for history in histories]
    final = compute_epsilon(events, DELTA, "prv")
    rdps = [compute_epsilon(history_events(h), DELTA, "rdp") for h in histories]
    return [(min(rdp, final), rdp) for rdp in rdps[:-1]] + [(final, rdps[-1])]


def _sampled_per_entry_seconds(events: Sequence[DPEvent], samples: int) -> float:
    histories = event_histories(events)
    picks = sorted({round(i * (len(histories) - 1) / max(samples - 1, 1)) for i in range(samples)})
    times = [_timed(functools.partial(recompute_epsilons, [histories[i]], DELTA))[1] for i in picks]
    return statistics.fmean(times)


def bench_size(
    entries: int, args: argparse.Namespace, key: Ed25519PrivateKey, folder: Path
) -> dict[str, Any]:
    """Build a ledger of ``entries`` entries and time its verification."""
    events = realistic_events(entries, args.steps_per_entry)
    exact = entries <= args.exact_max
    row: dict[str, Any] = {
        "entries": entries,
        "total_steps": sum(e.steps for e in events),
        "distinct_settings": len({(e.noise_multiplier, e.sample_rate) for e in events}),
        "mode": "measured" if exact else "estimated",
    }
    path = folder / f"ledger-{entries}.jsonl"
    epsilons, row["build_s"] = _timed(lambda: ledger_epsilons(events, exact, args.workers))
    write_ledger(path, events, key, epsilons)
    scan, row["integrity_s"] = _timed(lambda: scan_ledger(path, key.public_key()))
    assert scan.error is None and len(scan.entries) == entries, scan.error
    result, row["verify_s"] = _timed(lambda: verify_ledger(path, key.public_key()))
    assert result.ok, result.problem
    row["final_epsilon"], row["final_epsilon_rdp"] = result.epsilon, result.epsilon_rdp
    try:
        row["final_epsilon_pld"] = pld_epsilon(events, DELTA)
    except ImportError:  # dp-accounting is a test extra
        row["final_epsilon_pld"] = None
    if exact:
        result, row["full_1_worker_s"] = _timed(
            lambda: verify_ledger(path, key.public_key(), full=True)
        )
        assert result.ok, result.problem
        if args.workers > 1:
            result, row[f"full_{args.workers}_workers_s"] = _timed(
                lambda: verify_ledger(path, key.public_key(), full=True, workers=args.workers)
            )
            assert result.ok, result.problem
    else:
        per_entry = _sampled_per_entry_seconds(events, args.samples)
        row["per_entry_recompute_s"] = per_entry
        row["full_1_worker_s"] = row["integrity_s"] + entries * per_entry
    return row


def _format_table(rows: Sequence[dict[str, Any]], workers: int) -> str:
    parallel = f"full_{workers}_workers_s"
    header = (
        f"{'entries':>8} {'steps':>7} {'(σ,q)':>5} {'integrity':>10} {'verify':>8} "
        f"{'full 1w':>12} {f'full {workers}w':>10} {'ε PRV':>7} {'ε RDP':>7} {'ε PLD':>7}"
    )
    out = [header, "-" * len(header)]
    for row in rows:
        full = f"{row['full_1_worker_s']:.2f}" + (" est." if row["mode"] != "measured" else "")
        par = f"{row[parallel]:.2f}" if parallel in row else "–"
        pld = (
            "–" if row["final_epsilon_pld"] is None else format_epsilon(row["final_epsilon_pld"], 3)
        )
        out.append(
            f"{row['entries']:>8} {row['total_steps']:>7} {row['distinct_settings']:>5} "
            f"{row['integrity_s']:>10.3f} {row['verify_s']:>8.3f} {full:>12} "
            f"{par:>10} {format_epsilon(row['final_epsilon'], 3):>7} "
            f"{format_epsilon(row['final_epsilon_rdp'], 3):>7} {pld:>7}"
        )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time privacy-ledger verification (default and --full) for ledgers of "
        "growing size.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="sizes 10, 100, 1000 only, and build/verify in full only up to 100 entries",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--sizes", type=int, nargs="+", help="ledger sizes (overrides --quick)")
    parser.add_argument(
        "--exact-max",
        type=int,
        help="largest size built and verified in full; larger sizes are estimated "
        "(default 1000, or 100 with --quick)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the parallel verification and for building (default: up to 2)",
    )
    parser.add_argument(
        "--steps-per-entry", type=int, default=2, help="DP-SGD steps per entry (default 2)"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="entries timed when estimating (default 8)"
    )
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 10000]
    if args.exact_max is None:
        args.exact_max = 100 if args.quick else 1000
    if args.workers < 1 or args.steps_per_entry < 1 or args.samples < 1:
        parser.error("--workers, --steps-per-entry and --samples must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table (and write JSON when asked)."""
    args = parse_args(argv)
    key = Ed25519PrivateKey.generate()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedlora-ledger-bench-") as folder:
        for size in args.sizes:
            row = bench_size(size, args, key, Path(folder))
            rows.append(row)
            print(f"  done: {size} entries ({row['mode']})", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    print(
        f"ledger verification, δ={DELTA:g}, {args.steps_per_entry} steps/entry, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end; seconds"
    )
    print(_format_table(rows, args.workers))
    if args.json is not None:
        payload = {
            "benchmark": "ledger verification",
            "delta": DELTA,
            "steps_per_entry": args.steps_per_entry,
            "settings": [list(s) for s in SETTINGS],
            "rounds_per_run": ROUNDS_PER_RUN,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "load_average_at_end": load,
            "rows": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
