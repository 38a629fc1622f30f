"""``fedlora audit`` and ``fedlora node``: what compliance officers and node operators run.

Thin command layer over :mod:`privacy.audit` (verification and reports) and
:mod:`privacy.signing_keys` (the node's ledger signing key).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from privacy.accounting import format_epsilon
from privacy.audit import build_report, verify_ledger, write_report
from privacy.signing_keys import create_signing_key, load_public_key


def add_audit_parsers(
    sub: argparse._SubParsersAction,
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Register ``audit verify``, ``audit report`` and ``node init``."""
    audit = sub.add_parser(
        "audit",
        help="verify privacy ledgers and write the compliance report",
        description="Check that privacy ledgers are intact and what they spent.",
        formatter_class=formatter,
    )
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check hashes, chain, signatures and recomputed ε; exit 1 on the first problem",
        description="Verify ledgers: every entry's hash, the hash chain (edits, deletions, "
        "reorders), Ed25519 signatures (with --public-key, else the <ledger>.pub.pem beside "
        "each ledger) and the recorded ε against ε recomputed from the recorded events: RDP ε "
        "at every entry, PRV ε (the enforced total) at the last entry, or at every entry "
        "with --full. Exit status 0 when all hold, 1 otherwise.",
        formatter_class=formatter,
    )
    verify.add_argument("ledgers", nargs="+", type=Path, metavar="LEDGER")
    verify.add_argument("--public-key", type=Path, help="PEM public key to check signatures with")
    _add_full_arguments(verify)
    report = audit_sub.add_parser(
        "report",
        help="write a self-contained HTML (and JSON) report of every node's spend",
        description="Write a compliance report: per node the budget, ε spent (PRV; RDP "
        "alongside), δ, adjacency, sampling, σ, C, q, steps, runs, rounds, remaining budget, "
        "verification status and an ε-over-time plot.",
        formatter_class=formatter,
    )
    report.add_argument("ledgers", nargs="+", type=Path, metavar="LEDGER")
    report.add_argument("--out", type=Path, required=True, help="HTML file to write")
    report.add_argument("--json", type=Path, help="also write the report as JSON")
    _add_full_arguments(report)

    node = sub.add_parser(
        "node",
        help="set up a node (ledger signing key)",
        description="Node operator commands.",
        formatter_class=formatter,
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    init = node_sub.add_parser(
        "init",
        help="create the node's ledger signing key pair",
        description="Create the node's Ed25519 ledger signing key in --dir (private key "
        "mode 0600) and print the public key's fingerprint for the compliance officer.",
        formatter_class=formatter,
    )
    init.add_argument("--dir", type=Path, required=True, help="the node directory")
    init.add_argument("--force", action="store_true", help="replace an existing key")


def _add_full_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--full",
        action="store_true",
        help="recompute the PRV ε of every entry, not only the last one (the total spent); "
        "RDP ε is always recomputed at every entry. Costs one PRV call per entry: minutes "
        "for a 1,000-entry ledger instead of about a second",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes for --full (worth it from a few hundred entries)",
    )


def cmd_audit(args: argparse.Namespace) -> int:
    """Run ``fedlora audit verify|report``."""
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.audit_command == "verify":
        return _verify(args.ledgers, args.public_key, full=args.full, workers=args.workers)
    report = build_report(args.ledgers, full=args.full, workers=args.workers)
    write_report(report, args.out, args.json)
    failed = [n["node_id"] for n in report["nodes"] if n["verification"]["status"] != "OK"]
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    if failed:
        print(f"verification FAILED for: {', '.join(map(str, failed))}")
    return 0


def _verify(
    ledgers: Sequence[Path], public_key_path: Path | None, *, full: bool, workers: int
) -> int:
    key = load_public_key(public_key_path) if public_key_path else None
    status = 0
    for path in ledgers:
        result = verify_ledger(path, key, full=full, workers=workers)
        if result.ok:
            key_note = f" ({result.key_fingerprint})" if result.key_fingerprint else ""
            print(
                f"OK {path}: {result.entries} entries, ε = {format_epsilon(result.epsilon)} (PRV), "
                f"{format_epsilon(result.epsilon_rdp)} (RDP), δ = {result.delta}, signatures "
                f"{result.signatures}{key_note}; PRV ε recomputed at {result.prv_recomputed}"
            )
        else:
            status = 1
            print(f"FAILED {path}: line {result.line}: {result.kind}: {result.problem}")
    return status


def cmd_node(args: argparse.Namespace) -> int:
    """Run ``fedlora node init``."""
    info = create_signing_key(args.dir, force=args.force)
    print(f"private key: {info.private_key_path} (mode 0600; never leaves this machine)")
    print(f"public key:  {info.public_key_path}")
    print(f"fingerprint: {info.fingerprint}")
    return 0
