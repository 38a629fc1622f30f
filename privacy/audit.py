"""Ledger verification and the compliance report.

Why it exists: a compliance officer must be able to check, without trusting the node, that a
ledger is the one the node wrote (hashes, chain, signatures) and that the ε in it follows
from the recorded DP-SGD events (recomputed with the same accountant calls the node made:
RDP at every entry, PRV at the last or, in full mode, at every entry), and then read what
each node has spent in plain language. ``verify_ledger`` does the checking;
``build_report`` / ``write_report`` turn verified ledgers into a JSON document and a
self-contained HTML page.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_FLOOR, Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privacy.accounting import (
    ADJACENCY,
    PRV_EPS_ERROR,
    SAMPLING,
    DPEvent,
    compute_epsilon,
    format_epsilon,
)
from privacy.durable_io import write_json_atomic, write_text_atomic
from privacy.ledger import (
    LEDGER_ACCOUNTANT,
    LedgerEntry,
    LedgerError,
    ledger_public_key_path,
    scan_ledger,
)
from privacy.signing_keys import load_public_key, public_key_fingerprint

#: How the enforcing accountant is named in reports.
ACCOUNTANT_DESCRIPTION = "prv (Opacus PRVAccountant, upper bound)"
#: How the cross-check accountant is named in reports.
CROSS_CHECK_DESCRIPTION = "rdp (Opacus RDPAccountant)"
#: Relative tolerance between a recorded ε and the recomputed one.
EPSILON_RTOL = 1e-9
#: How far a PRV ε that is not recomputed may sit below the previous entry's or above the
#: last entry's: twice the PRV accountant's error, as each is an upper bound within it.
PRV_SLACK = 2 * PRV_EPS_ERROR
#: Packages whose versions the report lists.
REPORTED_PACKAGES: tuple[str, ...] = ("fedlora", "opacus", "torch", "flwr", "cryptography")

#: A merged event history: ((σ, q, steps), ...) in order of first appearance of each (σ, q).
History = tuple[tuple[float, float, int], ...]
#: Recomputed (PRV ε, RDP ε) by (merged history, δ); share one across calls to reuse work.
EpsilonCache = dict[tuple[History, float], tuple[float, float]]
#: Fewer new histories than this are recomputed in-process: starting worker processes (each
#: imports Opacus and torch) took ~7 s on a loaded 2-core machine, the cost of ~100 calls.
MIN_PARALLEL_HISTORIES = 200
#: What the accountants raise for settings they cannot handle.
_ACCOUNTING_ERRORS = (ValueError, RuntimeError, OverflowError, FloatingPointError)


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of ``verify_ledger``.

    Parameters
    ----------
    path
        The ledger file.
    ok
        True when every line passed every check.
    entries
        Entries that passed every check: all of them when ``ok``, else those before ``line``.
    lines
        Lines in the file.
    problem, kind, line
        The first problem (message, ``LedgerError.kind``, 1-based line), or None.
    epsilon, epsilon_rdp
        Cumulative ε (PRV, RDP) recomputed from the verified entries' events; 0 if none.
    delta
        The ledger's δ, or None when no entry verified.
    key_fingerprint
        Fingerprint of the public key the signatures were checked with, or None.
    signatures
        ``"verified"`` or ``"unchecked"`` (no public key given or found beside the ledger).
    final_hash
        Hash of the last verified entry, or None.
    prv_recomputed
        Which entries' PRV ε was recomputed exactly: ``"last entry"`` or ``"every entry"``.
    verified_entries
        The verified entries themselves.
    """

    path: Path
    ok: bool
    entries: int
    lines: int
    problem: str | None
    kind: str | None
    line: int | None
    epsilon: float
    epsilon_rdp: float
    delta: float | None
    key_fingerprint: str | None
    signatures: str
    final_hash: str | None
    prv_recomputed: str
    verified_entries: tuple[LedgerEntry, ...] = field(repr=False)


def _recompute(history: History, delta: float) -> tuple[float, float]:
    """(PRV ε, RDP ε) of a merged history: exactly the calls ``append_spend`` makes."""
    events = history_events(history)
    return (
        compute_epsilon(events, delta, LEDGER_ACCOUNTANT),
        compute_epsilon(events, delta, "rdp"),
    )


def history_events(history: History) -> list[DPEvent]:
    """The events of a merged history, for ``compute_epsilon``."""
    return [DPEvent(sigma, rate, steps) for sigma, rate, steps in history]


def event_histories(events: Iterable[DPEvent]) -> list[History]:
    """The merged event history after each event (what a cumulative ε is computed from).

    Equal to ``merge_events`` over each prefix, built incrementally; a zero-step event leaves
    the history unchanged.
    """
    steps: dict[tuple[float, float], int] = {}
    histories: list[History] = []
    for event in events:
        key = (event.noise_multiplier, event.sample_rate)
        steps[key] = steps.get(key, 0) + event.steps
        histories.append(tuple((s, q, n) for (s, q), n in steps.items() if n > 0))
    return histories


def recompute_epsilons(
    histories: Iterable[History],
    delta: float,
    *,
    workers: int = 1,
    cache: EpsilonCache | None = None,
) -> EpsilonCache:
    """(PRV ε, RDP ε) of every history not yet in ``cache``, added to it.

    Each value comes from ``compute_epsilon`` with exactly the arguments ``append_spend``
    used. Histories whose ε cannot be computed are left out (``verify_ledger`` reports them).

    Parameters
    ----------
    histories
        Merged histories, e.g. from ``event_histories``.
    delta
        δ of the ledger.
    workers
        Processes to use; 1 (or fewer than ``MIN_PARALLEL_HISTORIES`` new histories)
        computes in this process.
    cache
        Values to reuse and extend (a new dict when None).

    Returns
    -------
    EpsilonCache
        ``cache``, extended.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cache = {} if cache is None else cache
    missing = [h for h in dict.fromkeys(histories) if (h, delta) not in cache]
    if workers == 1 or len(missing) < MIN_PARALLEL_HISTORIES:
        for history in missing:
            with contextlib.suppress(*_ACCOUNTING_ERRORS):
                cache[(history, delta)] = _recompute(history, delta)
        return cache
    # Largest histories first: they cost the most, so the pool finishes evenly.
    missing.sort(key=lambda h: sum(n for _, _, n in h), reverse=True)
    context = multiprocessing.get_context("spawn")  # never fork a process with live threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [(h, pool.submit(_recompute, h, delta)) for h in missing]
        for history, future in futures:
            with contextlib.suppress(*_ACCOUNTING_ERRORS):
                cache[(history, delta)] = future.result()
    return cache


def _epsilon_problem(entry: LedgerEntry, history: History, cache: EpsilonCache) -> str | None:
    """Exact check: both recorded ε equal their recomputation, and PRV ε ≤ RDP ε."""
    try:
        prv, rdp = _cached_recompute(history, entry.delta, cache)
    except _ACCOUNTING_ERRORS as exc:
        return f"ε cannot be recomputed from the recorded events: {type(exc).__name__}: {exc}"
    if not math.isclose(entry.epsilon, prv, rel_tol=EPSILON_RTOL):
        return (
            f"recorded ε={entry.epsilon!r} but the recorded events give ε={prv!r} "
            f"({LEDGER_ACCOUNTANT}, δ={entry.delta:g})"
        )
    return _rdp_problem(entry, rdp)


def _cached_recompute(history: History, delta: float, cache: EpsilonCache) -> tuple[float, float]:
    """``_recompute`` through ``cache``; raises what the accountants raise."""
    if (history, delta) not in cache:
        cache[(history, delta)] = _recompute(history, delta)
    return cache[(history, delta)]


def _recomputed_prv(history: History, delta: float, cache: EpsilonCache) -> float:
    """The PRV ε of ``history`` (cached), or inf when it cannot be computed."""
    try:
        return _cached_recompute(history, delta, cache)[0]
    except _ACCOUNTING_ERRORS:
        return math.inf


def _rdp_problem(entry: LedgerEntry, rdp: float) -> str | None:
    if not math.isclose(entry.epsilon_rdp, rdp, rel_tol=EPSILON_RTOL):
        return f"recorded RDP ε={entry.epsilon_rdp!r} but the recorded events give ε={rdp!r}"
    if entry.epsilon > entry.epsilon_rdp:
        return (
            f"PRV ε={entry.epsilon!r} exceeds RDP ε={entry.epsilon_rdp!r}: the accountants "
            "disagree, which should not happen"
        )
    return None


def _consistency_problem(
    entry: LedgerEntry, history: History, previous: float, final: float
) -> str | None:
    """Cheap check of an entry whose PRV ε is not recomputed: its RDP ε exactly, and its PRV
    ε between the previous entry's recorded and the last entry's recomputed ε (cumulative ε
    cannot fall; the slack covers the PRV accountant's own error)."""
    events = history_events(history)
    try:
        rdp = compute_epsilon(events, entry.delta, "rdp")
    except _ACCOUNTING_ERRORS as exc:
        return f"ε cannot be recomputed from the recorded events: {type(exc).__name__}: {exc}"
    problem = _rdp_problem(entry, rdp)
    if problem is None and entry.epsilon < previous - PRV_SLACK:
        problem = f"cumulative ε fell from {previous!r} to {entry.epsilon!r}"
    if problem is None and entry.epsilon > final + PRV_SLACK:
        problem = f"ε={entry.epsilon!r} exceeds the last entry's recomputed ε={final!r}"
    return problem


def _default_public_key(path: Path) -> Ed25519PublicKey | None:
    beside = ledger_public_key_path(path)
    return load_public_key(beside) if beside.is_file() else None


def verify_ledger(
    path: Path,
    public_key: Ed25519PublicKey | None = None,
    *,
    full: bool = False,
    workers: int = 1,
    epsilon_cache: EpsilonCache | None = None,
) -> VerificationResult:
    """Verify a ledger file: integrity, authorship and the recorded ε.

    Per line, in order (the first failing check of the first failing line is reported):
    JSON parse (a bad last line is a ``torn_tail``, a bad earlier one ``malformed``); the
    recomputed hash equals ``hash`` (``edited``); ``prev_hash`` is the previous line's hash
    (else ``reordered`` when the predecessor is elsewhere in the file, ``deleted`` when it
    is nowhere); the signature verifies (``bad_signature``); fields are valid
    (``malformed``) and name the same node, data set and δ as line 1 (``mismatch``). Then
    ε (``epsilon_mismatch``): the recorded cumulative RDP ε of every entry equals
    ``compute_epsilon`` over the events so far (within ``EPSILON_RTOL`` relative) and PRV ε
    ≤ RDP ε. The recorded PRV ε — the one budgets are enforced with — is recomputed the
    same way at the last entry, which states what the node has spent in total; with
    ``full``, at every entry. Without ``full``, the PRV ε of the other entries is checked
    for consistency only: never falling by more than ``PRV_SLACK`` and never above the last
    entry's recomputed ε by more than that.

    Limits: a deleted *last* entry (or several) leaves a valid, shorter chain and cannot be
    detected from the file alone; compare ``entries`` and ``final_hash`` with a head
    recorded elsewhere (the report shows both). Without a public key, anybody can rebuild
    a consistent chain, so an unsigned verification shows internal consistency only.

    Cost: hashes, chain and signatures take about 0.2 ms per entry and each RDP check well
    under 1 ms (``privacy.rdp_memo``), so a 1,000-entry ledger verifies in about a second
    plus one PRV call (0.03 s to a few seconds, growing with the ledger's total steps). With
    ``full``, one PRV call per entry whose merged (σ, q, steps) history is new: minutes for
    1,000 entries; such values are cached in ``epsilon_cache`` (pass one dict to several
    calls to share it) and, with ``workers > 1``, computed in that many processes (when at
    least ``MIN_PARALLEL_HISTORIES`` are new). ``bench/ledger.py`` measures both.

    Parameters
    ----------
    path
        The ledger file.
    public_key
        The node's enrolled public key. When None, ``<ledger stem>.pub.pem`` beside the
        ledger is used if present (``signatures="unchecked"`` otherwise).
    full
        Recompute the PRV ε of every entry, not only of the last.
    workers
        Processes for recomputing ε with ``full`` (1: in this process).
    epsilon_cache
        Recomputed (PRV ε, RDP ε) values to reuse and extend.

    Returns
    -------
    VerificationResult
        Never raises for ledger content problems; they are in the result.

    Raises
    ------
    FileNotFoundError
        If the ledger does not exist.
    ValueError
        If ``workers`` < 1 or the public key beside the ledger cannot be loaded.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    path = Path(path)
    key = public_key if public_key is not None else _default_public_key(path)
    scan = scan_ledger(path, key)
    cache: EpsilonCache = {} if epsilon_cache is None else epsilon_cache
    entries = scan.entries
    histories = event_histories(entry.event for entry in entries)
    if full and workers > 1 and entries:  # all entries share line 1's δ (else the scan stopped)
        recompute_epsilons(histories, entries[0].delta, workers=workers, cache=cache)

    error: LedgerError | None = scan.error
    verified = len(entries)
    final = _recomputed_prv(histories[-1], entries[-1].delta, cache) if entries else math.inf
    previous = 0.0
    for index, (entry, history) in enumerate(zip(entries, histories, strict=True)):
        if full or index == len(entries) - 1:
            problem = _epsilon_problem(entry, history, cache)
        else:
            problem = _consistency_problem(entry, history, previous, final)
        if problem is not None:
            error = LedgerError(path, "epsilon_mismatch", problem, index + 1)
            verified = index
            break
        previous = entry.epsilon

    good = entries[:verified]
    epsilon, epsilon_rdp = (0.0, 0.0)
    if good:
        epsilon, epsilon_rdp = (math.nan, math.nan)
        with contextlib.suppress(*_ACCOUNTING_ERRORS):
            epsilon, epsilon_rdp = _cached_recompute(histories[verified - 1], good[-1].delta, cache)
    return VerificationResult(
        path=path,
        ok=error is None,
        entries=verified,
        lines=scan.lines,
        problem=str(error) if error is not None else None,
        kind=error.kind if error is not None else None,
        line=error.line if error is not None else None,
        epsilon=float(epsilon),
        epsilon_rdp=float(epsilon_rdp),
        delta=good[0].delta if good else None,
        key_fingerprint=public_key_fingerprint(key) if key is not None else None,
        signatures="verified" if key is not None else "unchecked",
        final_hash=good[-1].hash if good else None,
        prv_recomputed="every entry" if full else "last entry",
        verified_entries=tuple(good),
    )


def _software_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for package in REPORTED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _peek_node_id(path: Path) -> str | None:
    """The node id the first line claims (unverified; only used to pick the enrolled key)."""
    try:
        with open(path, "rb") as handle:
            first = json.loads(handle.readline().decode("utf-8"))
    except (OSError, ValueError):
        return None
    node = first.get("node_id") if isinstance(first, dict) else None
    return node if isinstance(node, str) and node else None


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _node_section(
    path: Path,
    result: VerificationResult | None,
    key_source: str,
    failure: tuple[str, str] | None,
) -> dict[str, Any]:
    """One node's part of the report; ``failure`` (kind, problem) overrides an OK result."""
    entries = result.verified_entries if result is not None else ()
    last = entries[-1] if entries else None
    budget = last.budget_epsilon if last is not None else None
    spent = result.epsilon if result is not None else 0.0
    if result is not None and not result.ok:
        kind, problem, line = result.kind, result.problem, result.line
    elif failure is not None:
        (kind, problem), line = failure, None
    else:
        kind = problem = line = None
    return {
        "node_id": last.node_id if last is not None else (_peek_node_id(path) or path.stem),
        "ledger": str(path),
        "dataset_fingerprint": last.dataset_fingerprint if last is not None else None,
        "key_fingerprint": result.key_fingerprint if result is not None else None,
        "key_source": key_source,
        "signatures": result.signatures if result is not None else "unchecked",
        "verification": {
            "status": "OK" if kind is None else "FAILED",
            "problem": problem,
            "kind": kind,
            "line": line,
            "prv_recomputed": result.prv_recomputed if result is not None else None,
        },
        "verified_entries": len(entries),
        "lines_in_file": result.lines if result is not None else None,
        "budget_epsilon": budget,
        "epsilon_spent": spent,
        "epsilon_rdp": result.epsilon_rdp if result is not None else 0.0,
        "remaining_budget": max(0.0, budget - spent) if budget is not None else None,
        "delta": result.delta if result is not None else None,
        "accountant": ACCOUNTANT_DESCRIPTION,
        "cross_check": CROSS_CHECK_DESCRIPTION,
        "adjacency": ADJACENCY,
        "sampling": SAMPLING,
        "noise_multipliers": sorted(set(e.noise_multiplier for e in entries)),
        "clip_norms": sorted(set(e.clip_norm for e in entries)),
        "sample_rates": sorted(set(e.sample_rate for e in entries)),
        "total_steps": sum(e.steps for e in entries),
        "runs": _distinct(e.run_id for e in entries),
        "rounds": len(set((e.run_id, e.round) for e in entries)),
        "entries": len(entries),
        "first_timestamp": entries[0].timestamp if entries else None,
        "last_timestamp": last.timestamp if last is not None else None,
        "final_hash": result.final_hash if result is not None else None,
        "epsilon_over_time": [[e.timestamp, e.round, e.run_id, e.epsilon] for e in entries],
    }


def build_report(
    ledgers: Sequence[Path],
    public_keys: Mapping[str, Path] | None = None,
    *,
    full: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Verify ledgers and gather what a compliance officer needs, as JSON-ready data.

    A ledger that fails verification is still reported: its section says FAILED with the
    reason, and its figures cover only the entries before the problem (``verified_entries``
    of ``lines_in_file``). A ledger that cannot be read is FAILED with kind ``unreadable``.
    When ``public_keys`` is given, a ledger whose node has no enrolled key is FAILED with
    kind ``unenrolled`` even if it verifies against the key beside it: anybody can write a
    consistent ledger with a key of their own. Every ε in the report is recomputed from
    recorded events.

    Parameters
    ----------
    ledgers
        Ledger files, one section each.
    public_keys
        Enrolled public key files by node id. A node not listed is checked with the key
        beside its ledger (``<stem>.pub.pem``), which shows only that the ledger is
        consistent with that key; with neither, signatures are unchecked.
    full, workers
        Recompute the PRV ε of every entry, in that many processes (see ``verify_ledger``).

    Returns
    -------
    dict
        ``generated_at``, ``software`` (package versions), ``accountant``, ``adjacency``,
        ``sampling``, ``all_verified`` and ``nodes`` (one dict per ledger; see the HTML
        report for the meaning of each field).
    """
    cache: EpsilonCache = {}
    nodes: list[dict[str, Any]] = []
    for raw_path in ledgers:
        path = Path(raw_path)
        claimed = _peek_node_id(path)
        enrolled = public_keys.get(claimed) if public_keys and claimed else None
        if enrolled is not None:
            key_source = f"enrolled key {enrolled}"
        elif ledger_public_key_path(path).is_file():
            key_source = f"key beside the ledger ({ledger_public_key_path(path).name})"
        else:
            key_source = "none: signatures unchecked"
        try:
            key = load_public_key(Path(enrolled)) if enrolled is not None else None
            result = verify_ledger(path, key, full=full, workers=workers, epsilon_cache=cache)
        except (OSError, ValueError) as exc:
            failure = ("unreadable", f"{path}: {exc}")
            nodes.append(_node_section(path, None, key_source, failure))
            continue
        unenrolled = None
        if public_keys is not None and enrolled is None:
            unenrolled = (
                "unenrolled",
                f"{path}: node {claimed!r} has no enrolled public key; the ledger was checked "
                f"only against {key_source}",
            )
        nodes.append(_node_section(path, result, key_source, unenrolled))
    return {
        "title": "fedlora privacy audit",
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": _software_versions(),
        "accountant": ACCOUNTANT_DESCRIPTION,
        "cross_check": CROSS_CHECK_DESCRIPTION,
        "adjacency": ADJACENCY,
        "sampling": SAMPLING,
        "all_verified": all(node["verification"]["status"] == "OK" for node in nodes),
        "nodes": nodes,
    }


def _up(value: float | None, places: int = 4) -> str:
    """ε for display: rounded *up*, so a printed ε never understates the spend."""
    return "–" if value is None else format_epsilon(value, places)


def _down(value: float | None, places: int = 4) -> str:
    """Remaining budget for display: rounded *down*, never overstating what is left."""
    if value is None:
        return "–"
    quantum = Decimal(1).scaleb(-places)
    return str(Decimal(value).quantize(quantum, rounding=ROUND_FLOOR))


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _epsilon_plot(node: Mapping[str, Any]) -> str | None:
    """A base64 PNG of the node's cumulative ε over time (with its budget), or None."""
    from matplotlib import dates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = node["epsilon_over_time"]
    if not series:
        return None
    eps = [point[3] for point in series]
    times = [datetime.fromisoformat(point[0]) for point in series]
    figure = Figure(figsize=(7.0, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    marker = "o" if len(eps) <= 200 else None
    if len(set(times)) > 1:
        axes.step(dates.date2num(times), eps, where="post", marker=marker, markersize=3)
        axes.xaxis_date(tz=timezone.utc)
        axes.set_xlabel("time (UTC)")
        figure.autofmt_xdate()
    else:
        axes.step(range(1, len(eps) + 1), eps, where="post", marker=marker, markersize=3)
        axes.set_xlabel("ledger entry")
    if node["budget_epsilon"] is not None:
        axes.axhline(node["budget_epsilon"], color="#b00020", linestyle="--", label="budget ε")
        axes.legend(loc="upper left")
    axes.set_ylabel("cumulative ε (PRV)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:60rem;padding:0 1rem;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0;width:100%}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
th{width:16rem;font-weight:600;color:#444}
code{font-size:.85em;word-break:break-all}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:.3rem;font-weight:700}
.ok{background:#d7f5dd;color:#0a5c1f}.failed{background:#fbd9dc;color:#8a0010}
.note{background:#f6f6f6;padding:.6rem .9rem;border-radius:.3rem}
img{max-width:100%}
"""


def _guarantee_html(report: Mapping[str, Any]) -> str:
    return f"""<h2>What the guarantee is</h2>
<p>Each node's ledger supports a <strong>record-level (ε, δ)-differential privacy</strong>
guarantee for that node's data set, under <strong>add/remove-one adjacency</strong> (two data
sets are neighbours when one is the other with one record added or removed) and
<strong>{_esc(report["sampling"])} sampling</strong> (every record joins each training batch
independently with probability q). It is composed over <em>every</em> DP-SGD step that ever
touched that data set &mdash; all rounds of all runs recorded in the ledger &mdash; by the
{_esc(report["accountant"])}, with the {_esc(report["cross_check"])} as a cross-check.</p>
<p>In plain words: for any one record, whatever can be computed from the adapter updates the
node released is almost equally likely whether or not that record was in the data set; the
probability of any outcome changes by at most a factor of e<sup>ε</sup>, except with
probability δ. Smaller ε is stronger protection, and the factor grows fast: ε = 1 bounds it
at 2.72, ε = 8 at about 2981.</p>
<p>When secure aggregation is on, the coordinating server only sees the sum of at least three
nodes' masked updates, never one node's update; the per-node guarantee above does not rely on
it, since the noise is added on the node before anything leaves it.</p>
<p class="note"><strong>Not covered:</strong> anything a node releases outside DP-SGD, such as
optional plaintext metrics (training loss, accuracy, exact example counts) or evaluation on
node data unless it was charged to the ledger; spends recorded in another ledger (another data
set fingerprint) even if the data sets share records; and a deleted <em>last</em> entry, which
the file alone cannot reveal &mdash; compare each node's entry count and final hash with a
head recorded elsewhere.</p>"""


def _row(name: str, value: str) -> str:
    return f"<tr><th>{_esc(name)}</th><td>{value}</td></tr>"


def _node_html(node: Mapping[str, Any]) -> str:
    verification = node["verification"]
    if verification["status"] == "OK":
        short = '<span class="badge ok">OK</span>'
        badge = short
    else:
        short = '<span class="badge failed">FAILED</span>'
        badge = f"{short} {_esc(verification['kind'])}: {_esc(verification['problem'])}"
    scope = ""
    if verification["status"] != "OK":
        scope = (
            f'<p class="note">The figures below cover only the {node["verified_entries"]} '
            f"entries before the problem, which verified; nothing after it can be trusted.</p>"
        )

    def listed(values: Sequence[Any]) -> str:
        return _esc(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values))

    spent = node["epsilon_spent"]
    factor = _up(math.exp(float(_up(spent))), 2) if spent < 50 else "more than e^50"
    rows = [
        _row("verification", badge),
        _row("node", _esc(node["node_id"])),
        _row("ledger file", f"<code>{_esc(node['ledger'])}</code>"),
        _row("data set fingerprint", f"<code>{_esc(node['dataset_fingerprint'])}</code>"),
        _row("signing key fingerprint", f"<code>{_esc(node['key_fingerprint'])}</code>"),
        _row("key used", _esc(node["key_source"])),
        _row("signatures", _esc(node["signatures"])),
        _row(
            "ε recomputed from the events",
            "RDP at every entry; PRV at "
            + _esc(node["verification"]["prv_recomputed"] or "no entry")
            + " (the others checked for consistency)"
            * (node["verification"]["prv_recomputed"] == "last entry"),
        ),
        _row("budget ε", _esc(_up(node["budget_epsilon"]))),
        _row("ε spent (PRV, rounded up)", f"<strong>{_esc(_up(spent))}</strong>"),
        _row("ε spent (RDP cross-check)", _esc(_up(node["epsilon_rdp"]))),
        _row("remaining budget (rounded down)", _esc(_down(node["remaining_budget"]))),
        _row("δ", _esc(f"{node['delta']:g}" if node["delta"] is not None else "–")),
        _row("accountant", _esc(node["accountant"])),
        _row("adjacency", _esc(node["adjacency"])),
        _row("sampling", _esc(node["sampling"])),
        _row("noise multipliers σ", listed(node["noise_multipliers"])),
        _row("clipping norms C", listed(node["clip_norms"])),
        _row("sampling rates q", listed(node["sample_rates"])),
        _row("total DP-SGD steps", _esc(node["total_steps"])),
        _row("runs", f"{len(node['runs'])}: {listed(node['runs'])}"),
        _row("rounds", _esc(node["rounds"])),
        _row(
            "entries (verified / lines in file)",
            _esc(f"{node['verified_entries']} / {node['lines_in_file']}"),
        ),
        _row("first entry", _esc(node["first_timestamp"])),
        _row("last entry", _esc(node["last_timestamp"])),
        _row("final hash", f"<code>{_esc(node['final_hash'])}</code>"),
    ]
    plot = _epsilon_plot(node)
    figure = (
        f'<img alt="cumulative ε over time for node {_esc(node["node_id"])}" '
        f'src="data:image/png;base64,{plot}">'
        if plot is not None
        else "<p>No verified entries to plot.</p>"
    )
    meaning = ""
    if node["entries"]:
        meaning = (
            f"<p>For any single record of this node's data set, the probability of any outcome "
            f"of what the node released through DP-SGD changes by at most a factor of "
            f"{_esc(factor)} (e<sup>ε</sup>, ε = {_esc(_up(spent))}), except with probability "
            f"δ = {_esc(node['delta'])}.</p>"
        )
    return (
        f"<section><h2>Node {_esc(node['node_id'])} {short}</h2>{scope}"
        f"<table>{''.join(rows)}</table>"
        f"{meaning}{figure}</section>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and images, no links out).

    Parameters
    ----------
    report
        As returned by ``build_report``.
    """
    software = "".join(_row(name, _esc(version)) for name, version in report["software"].items())
    status = (
        '<span class="badge ok">all ledgers verified</span>'
        if report["all_verified"]
        else '<span class="badge failed">FAILED: at least one ledger did not verify</span>'
    )
    sections = "".join(_node_html(node) for node in report["nodes"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(report["title"])}</title><style>{_CSS}</style></head>
<body><h1>{_esc(report["title"])}</h1>
<p>Generated {_esc(report["generated_at"])} &middot; {len(report["nodes"])} ledger(s)
&middot; {status}</p>
{_guarantee_html(report)}
{sections}
<h2>Software</h2><table>{software}</table>
</body></html>
"""


def write_report(report: Mapping[str, Any], html_path: Path, json_path: Path | None) -> None:
    """Write the report as HTML (and JSON), each file atomically and durably.

    Parameters
    ----------
    report
        As returned by ``build_report``.
    html_path
        The self-contained HTML page.
    json_path
        Where the JSON goes, or None for none.
    """
    write_text_atomic(html_path, render_html(report))
    if json_path is not None:
        write_json_atomic(json_path, report)
