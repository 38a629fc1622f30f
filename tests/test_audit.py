"""Ledger verification (tampering of every kind) and the compliance report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import privacy.audit as audit
from privacy.accounting import DPEvent, compute_epsilon
from privacy.audit import EpsilonCache, build_report, verify_ledger, write_report
from privacy.ledger import (
    GENESIS_HASH,
    PrivacyLedger,
    dataset_fingerprint,
    entry_hash,
    ledger_public_key_path,
    make_entry,
    repair_torn_tail,
    sign_hash,
)
from privacy.signing_keys import public_key_fingerprint

DELTA = 1e-5
SPENDS = [
    ("run-a", 0, DPEvent(1.1, 0.02, 20)),
    ("run-a", 1, DPEvent(1.1, 0.02, 20)),
    ("run-b", 0, DPEvent(0.9, 0.05, 10)),
    ("run-b", 1, DPEvent(1.3, 0.02, 30)),
]


@pytest.fixture(scope="module")
def node_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def cache() -> EpsilonCache:
    """Recomputed ε shared by the tests of this module (keyed by history, so always valid)."""
    return {}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, node_key: Ed25519PrivateKey) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "clinic-7.jsonl"
    ledger = PrivacyLedger(
        path,
        node_id="clinic-7",
        dataset_fingerprint=dataset_fingerprint(["fever", "rash"], ["flu", "measles"]),
        signing_key=node_key,
    )
    for run_id, round_, event in SPENDS:
        ledger.append_spend(
            run_id=run_id,
            round=round_,
            event=event,
            clip_norm=1.0,
            delta=DELTA,
            budget_epsilon=4.0,
        )
    return path


@pytest.fixture()
def ledger_path(tmp_path: Path, pristine: Path) -> Path:
    """A fresh copy of the 4-entry ledger and its public key, for tampering."""
    path = tmp_path / pristine.name
    shutil.copy(pristine, path)
    shutil.copy(ledger_public_key_path(pristine), ledger_public_key_path(path))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _rewrite(path: Path, line: int, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    lines = _lines(path)
    entry = json.loads(lines[line - 1])
    change(entry)
    lines[line - 1] = json.dumps(entry, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))
    return entry


def _expect(result: audit.VerificationResult, kind: str, line: int) -> None:
    assert not result.ok
    assert (result.kind, result.line) == (kind, line), result.problem
    assert result.entries == line - 1
    assert result.problem is not None and f"line {line}" in result.problem


# ---------------------------------------------------------------- an honest ledger


def test_honest_ledger_verifies(
    ledger_path: Path, node_key: Ed25519PrivateKey, cache: EpsilonCache
) -> None:
    result = verify_ledger(ledger_path, epsilon_cache=cache)
    assert result.ok and result.problem is None and result.kind is None
    assert result.entries == result.lines == len(SPENDS)
    events = [event for _, _, event in SPENDS]
    assert result.epsilon == compute_epsilon(events, DELTA, "prv")
    assert result.epsilon_rdp == compute_epsilon(events, DELTA, "rdp")
    assert result.delta == DELTA
    assert result.signatures == "verified"
    assert result.key_fingerprint == public_key_fingerprint(node_key.public_key())
    assert result.final_hash == json.loads(_lines(ledger_path)[-1])["hash"]


def test_without_a_public_key_signatures_are_unchecked(
    ledger_path: Path, cache: EpsilonCache
) -> None:
    ledger_public_key_path(ledger_path).unlink()
    result = verify_ledger(ledger_path, epsilon_cache=cache)
    assert result.ok and result.signatures == "unchecked" and result.key_fingerprint is None


def test_epsilon_cache_avoids_recomputation(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache: EpsilonCache = {}
    assert verify_ledger(ledger_path, full=True, epsilon_cache=cache).ok
    assert len(cache) == len(SPENDS)  # every entry's merged history is new

    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("compute_epsilon called despite a cached history")

    monkeypatch.setattr(audit, "compute_epsilon", refuse)
    assert verify_ledger(ledger_path, full=True, epsilon_cache=cache).ok


def test_parallel_workers_give_the_same_result(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = verify_ledger(ledger_path, full=True, epsilon_cache={})
    pools: list[int] = []

    class CountingPool(ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pools.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(audit, "MIN_PARALLEL_HISTORIES", 2)
    monkeypatch.setattr(audit, "ProcessPoolExecutor", CountingPool)
    parallel = verify_ledger(ledger_path, full=True, workers=2, epsilon_cache={})
    assert pools == [2]
    assert parallel == serial


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("epsilon", lambda v: v / 2),
        ("epsilon_rdp", lambda v: v + 0.5),
        ("steps", lambda v: v + 1),
        ("noise_multiplier", lambda v: v + 0.5),
        ("sample_rate", lambda v: v / 2),
        ("clip_norm", lambda v: v * 2),
        ("delta", lambda v: v / 10),
        ("budget_epsilon", lambda v: v * 10),
        ("timestamp", lambda v: "2020-01-01T00:00:00.000000+00:00"),
        ("run_id", lambda v: v + "-x"),
        ("round", lambda v: v + 7),
        ("node_id", lambda v: "someone-else"),
        ("prev_hash", lambda v: "f" * 64),
    ],
)
@pytest.mark.parametrize("line", [1, 2, 4])
def test_editing_any_field_is_detected(
    ledger_path: Path, field: str, change: Callable[[Any], Any], line: int, cache: EpsilonCache
) -> None:
    _rewrite(ledger_path, line, lambda entry: entry.__setitem__(field, change(entry[field])))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "edited", line)


def test_deleting_a_middle_entry_is_detected(ledger_path: Path, cache: EpsilonCache) -> None:
    lines = _lines(ledger_path)
    ledger_path.write_text("".join(lines[:1] + lines[2:]))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "deleted", 2)


def test_deleting_the_first_entry_is_detected(ledger_path: Path, cache: EpsilonCache) -> None:
    ledger_path.write_text("".join(_lines(ledger_path)[1:]))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "deleted", 1)


@pytest.mark.parametrize(("first", "second"), [(1, 2), (2, 3), (3, 4), (1, 4)])
def test_swapping_two_entries_is_detected(
    ledger_path: Path, first: int, second: int, cache: EpsilonCache
) -> None:
    lines = _lines(ledger_path)
    lines[first - 1], lines[second - 1] = lines[second - 1], lines[first - 1]
    ledger_path.write_text("".join(lines))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "reordered", first)


def test_a_repeated_entry_is_detected(ledger_path: Path, cache: EpsilonCache) -> None:
    lines = _lines(ledger_path)
    ledger_path.write_text("".join(lines[:3] + lines[2:]))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "reordered", 4)


def test_a_signature_by_another_key_is_detected(
    ledger_path: Path, node_key: Ed25519PrivateKey, cache: EpsilonCache
) -> None:
    other = Ed25519PrivateKey.generate()
    _rewrite(ledger_path, 3, lambda e: e.__setitem__("signature", sign_hash(e["hash"], other)))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "bad_signature", 3)
    explicit = verify_ledger(ledger_path, node_key.public_key(), epsilon_cache=cache)
    _expect(explicit, "bad_signature", 3)


@pytest.mark.parametrize("garbage", ["", "not base64!", "QUJD", "A" * 88])
def test_a_garbage_signature_is_detected(
    ledger_path: Path, garbage: str, cache: EpsilonCache
) -> None:
    _rewrite(ledger_path, 2, lambda entry: entry.__setitem__("signature", garbage))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "bad_signature", 2)


def test_truncation_mid_line_is_a_torn_tail_that_repair_fixes(
    ledger_path: Path, cache: EpsilonCache
) -> None:
    data = ledger_path.read_bytes()
    ledger_path.write_bytes(data[: len(data) - 60])
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "torn_tail", len(SPENDS))
    assert repair_torn_tail(ledger_path) > 0
    repaired = verify_ledger(ledger_path, epsilon_cache=cache)
    assert repaired.ok and repaired.entries == len(SPENDS) - 1


def test_a_malformed_middle_line_is_not_a_torn_tail(ledger_path: Path, cache: EpsilonCache) -> None:
    lines = _lines(ledger_path)
    lines[1] = lines[1][:40] + "\n"
    ledger_path.write_text("".join(lines))
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "malformed", 2)
    assert repair_torn_tail(ledger_path) == 0


def _forge_epsilon(
    path: Path, line: int, signer: Ed25519PrivateKey, field: str = "epsilon", factor: float = 0.5
) -> None:
    """Scale ε on ``line``, then re-hash, re-chain and re-sign it and every later line: a
    forgery as consistent as the signer can make it."""
    lines = _lines(path)
    prev = json.loads(lines[line - 2])["hash"] if line > 1 else GENESIS_HASH
    for number in range(line, len(lines) + 1):
        entry = json.loads(lines[number - 1])
        if number == line:
            entry[field] = entry[field] * factor
        entry["prev_hash"] = prev
        entry["hash"] = prev = entry_hash(entry)
        entry["signature"] = sign_hash(entry["hash"], signer)
        lines[number - 1] = json.dumps(entry, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))


def test_forged_epsilon_resigned_with_another_key(
    ledger_path: Path, node_key: Ed25519PrivateKey, cache: EpsilonCache
) -> None:
    forger = Ed25519PrivateKey.generate()
    _forge_epsilon(ledger_path, len(SPENDS), forger)
    result = verify_ledger(ledger_path, node_key.public_key(), epsilon_cache=cache)
    _expect(result, "bad_signature", len(SPENDS))


def test_a_rebuilt_chain_fails_on_the_key_or_on_epsilon(
    ledger_path: Path, node_key: Ed25519PrivateKey, cache: EpsilonCache
) -> None:
    # The forger lowers ε on line 2, then rebuilds every hash, re-signs every line with
    # their own key and swaps the public key beside the ledger: internally consistent.
    forger = Ed25519PrivateKey.generate()
    prev = GENESIS_HASH
    lines = []
    for number, line in enumerate(_lines(ledger_path), start=1):
        entry = json.loads(line)
        if number == 2:
            entry["epsilon"] = entry["epsilon"] / 2
        entry["prev_hash"] = prev
        entry["hash"] = prev = entry_hash(entry)
        entry["signature"] = sign_hash(entry["hash"], forger)
        lines.append(json.dumps(entry) + "\n")
    ledger_path.write_text("".join(lines))
    ledger_public_key_path(ledger_path).write_bytes(
        forger.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _expect(
        verify_ledger(ledger_path, node_key.public_key(), epsilon_cache=cache), "bad_signature", 1
    )
    _expect(verify_ledger(ledger_path, epsilon_cache=cache), "epsilon_mismatch", 2)
    _expect(verify_ledger(ledger_path, full=True, epsilon_cache=cache), "epsilon_mismatch", 2)


def test_by_default_only_the_last_prv_epsilon_is_recomputed_exactly(
    ledger_path: Path, node_key: Ed25519PrivateKey, cache: EpsilonCache
) -> None:
    # A signed, slightly understated PRV ε in the middle stays within the consistency
    # bounds: only --full (every entry recomputed) can tell. The result says which it was.
    _forge_epsilon(ledger_path, 2, node_key, "epsilon", 0.999)
    quick = verify_ledger(ledger_path, epsilon_cache=cache)
    assert quick.ok and quick.prv_recomputed == "last entry"
    _expect(verify_ledger(ledger_path, full=True, epsilon_cache=cache), "epsilon_mismatch", 2)


@pytest.mark.parametrize(
    ("line", "field", "factor", "reason"),
    [
        (2, "epsilon_rdp", 1.001, "RDP"),  # every RDP ε is recomputed exactly
        (3, "epsilon", 0.3, "fell"),  # cumulative ε cannot fall
        (3, "epsilon", 1.2, "exceeds the last entry"),  # yet below its RDP ε
    ],
)
def test_default_verification_catches_inconsistent_middle_entries(
    ledger_path: Path,
    node_key: Ed25519PrivateKey,
    cache: EpsilonCache,
    line: int,
    field: str,
    factor: float,
    reason: str,
) -> None:
    _forge_epsilon(ledger_path, line, node_key, field, factor)
    result = verify_ledger(ledger_path, epsilon_cache=cache)
    _expect(result, "epsilon_mismatch", line)
    assert reason in (result.problem or "")


@pytest.mark.parametrize(("field", "factor"), [("epsilon", 0.5), ("epsilon_rdp", 2.0)])
def test_node_recording_a_wrong_epsilon_is_caught(
    ledger_path: Path, node_key: Ed25519PrivateKey, field: str, factor: float, cache: EpsilonCache
) -> None:
    # The key holder itself signs a wrong ε: only recomputation can catch that.
    _forge_epsilon(ledger_path, len(SPENDS), node_key, field, factor)
    result = verify_ledger(ledger_path, epsilon_cache=cache)
    _expect(result, "epsilon_mismatch", len(SPENDS))
    assert result.epsilon == json.loads(_lines(ledger_path)[-2])["epsilon"]


def test_prv_above_rdp_is_reported(tmp_path: Path, node_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "odd.jsonl"
    event = DPEvent(1.0, 0.05, 10)
    prv = compute_epsilon([event], DELTA, "prv")
    entry = make_entry(
        prev_hash=GENESIS_HASH,
        node_id="odd",
        dataset_fingerprint=dataset_fingerprint(["a"], ["b"]),
        run_id="r",
        round=0,
        event=event,
        clip_norm=1.0,
        delta=DELTA,
        budget_epsilon=4.0,
        epsilon=prv,
        epsilon_rdp=prv,
        timestamp=datetime.now(timezone.utc),
        signing_key=node_key,
    )
    path.write_text(entry.to_json_line())
    cache: EpsilonCache = {(((1.0, 0.05, 10),), DELTA): (prv, prv / 2)}  # RDP said smaller
    result = verify_ledger(path, node_key.public_key(), epsilon_cache=cache)
    _expect(result, "epsilon_mismatch", 1)
    assert "RDP" in (result.problem or "")


# ---------------------------------------------------------------- a long ledger


def _write_ledger(path: Path, key: Ed25519PrivateKey, events: list[DPEvent]) -> None:
    """A signed, chained ledger of ``events``; ε values computed in two processes."""
    fingerprint = dataset_fingerprint(["x"], ["y"])
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    histories = audit.event_histories(events)
    epsilons = audit.recompute_epsilons(histories, DELTA, workers=2)
    prev, lines = GENESIS_HASH, []
    for index, (event, history) in enumerate(zip(events, histories, strict=True)):
        entry = make_entry(
            prev_hash=prev,
            node_id="long",
            dataset_fingerprint=fingerprint,
            run_id=f"run-{index // 500}",
            round=index % 500,
            event=event,
            clip_norm=1.0,
            delta=DELTA,
            budget_epsilon=10.0,
            epsilon=epsilons[(history, DELTA)][0],
            epsilon_rdp=epsilons[(history, DELTA)][1],
            timestamp=start + timedelta(minutes=index),
            signing_key=key,
        )
        lines.append(entry.to_json_line())
        prev = entry.hash
    path.write_text("".join(lines))


@pytest.mark.slow  # minutes: 1,000 PRV + RDP calls to build, 1,000 more to verify in full
def test_a_thousand_entry_ledger_verifies_and_tampering_deep_inside_shows(
    tmp_path: Path, node_key: Ed25519PrivateKey
) -> None:
    events = [DPEvent(2.0, 0.01, 1)] * 900 + [DPEvent(1.5, 0.02, 1)] * 100
    path = tmp_path / "long.jsonl"
    _write_ledger(path, node_key, events)
    quick = verify_ledger(path, node_key.public_key())
    assert quick.ok and quick.entries == 1000 and quick.prv_recomputed == "last entry"
    cache: EpsilonCache = {}
    result = verify_ledger(path, node_key.public_key(), full=True, workers=2, epsilon_cache=cache)
    assert result.ok and result.entries == 1000 and len(cache) == 1000
    assert result.epsilon == quick.epsilon
    for index in (0, 899, 900, 999):  # spot checks against the accounting module itself
        expected = compute_epsilon(events[: index + 1], DELTA, "prv")
        assert result.verified_entries[index].epsilon == expected
    assert result.epsilon == compute_epsilon(events, DELTA, "prv")
    _rewrite(path, 777, lambda entry: entry.__setitem__("steps", 2))
    _expect(verify_ledger(path, node_key.public_key(), epsilon_cache=cache), "edited", 777)
    _forge_epsilon(path, 777, node_key)  # a signed but understated ε deep inside
    _expect(verify_ledger(path, node_key.public_key()), "epsilon_mismatch", 777)
    _expect(
        verify_ledger(path, node_key.public_key(), full=True, epsilon_cache=cache),
        "epsilon_mismatch",
        777,
    )


# ---------------------------------------------------------------- the report


def test_report_on_an_honest_and_a_tampered_ledger(
    tmp_path: Path,
    ledger_path: Path,
    pristine: Path,
    node_key: Ed25519PrivateKey,
    cache: EpsilonCache,
) -> None:
    evil_key = Ed25519PrivateKey.generate()
    evil = tmp_path / "evil" / "n.jsonl"
    ledger = PrivacyLedger(
        evil,
        node_id='<script>alert("x")</script>',
        dataset_fingerprint=dataset_fingerprint(["a"], ["b"]),
        signing_key=evil_key,
    )
    for run_id, round_, event in SPENDS[:3]:
        ledger.append_spend(
            run_id=run_id + "&<b>",
            round=round_,
            event=event,
            clip_norm=0.5,
            delta=DELTA,
            budget_epsilon=0.5,  # overspent: the remaining budget shows 0, never negative
        )
    _rewrite(evil, 2, lambda entry: entry.__setitem__("steps", 1))
    key_file = tmp_path / "clinic.pub.pem"
    shutil.copy(ledger_public_key_path(pristine), key_file)

    report = build_report([pristine, evil], {"clinic-7": key_file})
    html_path, json_path = tmp_path / "out" / "report.html", tmp_path / "out" / "report.json"
    write_report(report, html_path, json_path)

    good, bad = report["nodes"]
    assert good["verification"]["status"] == "OK" and good["key_source"].startswith("enrolled")
    assert good["epsilon_spent"] == verify_ledger(pristine, epsilon_cache=cache).epsilon
    assert good["remaining_budget"] == max(0.0, 4.0 - good["epsilon_spent"])
    assert good["entries"] == good["rounds"] == 4 and good["runs"] == ["run-a", "run-b"]
    assert good["total_steps"] == sum(event.steps for _, _, event in SPENDS)
    assert good["noise_multipliers"] == [0.9, 1.1, 1.3]
    assert [point[3] for point in good["epsilon_over_time"]] == sorted(
        point[3] for point in good["epsilon_over_time"]
    )
    assert bad["verification"]["status"] == "FAILED"
    assert (bad["verification"]["kind"], bad["verification"]["line"]) == ("edited", 2)
    assert bad["entries"] == 1 and bad["epsilon_spent"] > 0.5 and bad["remaining_budget"] == 0.0
    assert report["all_verified"] is False

    page = html_path.read_text()
    assert "clinic-7" in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script>" not in page and "&<b>" not in page
    assert page.count('src="data:image/png;base64,') == 2
    assert "FAILED" in page and "OK" in page
    assert "add/remove" in page and "Poisson" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))


def test_report_fails_wrong_keys_unenrolled_nodes_and_missing_files(
    tmp_path: Path, pristine: Path
) -> None:
    wrong = tmp_path / "wrong.pub.pem"
    wrong.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    walk_in = tmp_path / "walk-in.jsonl"  # consistent with its own key, but never enrolled
    PrivacyLedger(
        walk_in,
        node_id="walk-in",
        dataset_fingerprint=dataset_fingerprint(["a"], ["b"]),
        signing_key=Ed25519PrivateKey.generate(),
    ).append_spend(
        run_id="r", round=0, event=DPEvent(1.0, 0.1, 3), clip_norm=1.0, delta=DELTA,
        budget_epsilon=2.0,
    )  # fmt: skip
    assert verify_ledger(walk_in).ok
    missing = tmp_path / "nowhere.jsonl"
    report = build_report([pristine, missing, walk_in], {"clinic-7": wrong})
    enrolled, absent, unenrolled = (node["verification"] for node in report["nodes"])
    assert (enrolled["status"], enrolled["kind"], enrolled["line"]) == (
        "FAILED",
        "bad_signature",
        1,
    )
    assert (absent["status"], absent["kind"]) == ("FAILED", "unreadable")
    assert (unenrolled["status"], unenrolled["kind"]) == ("FAILED", "unenrolled")
    assert report["nodes"][2]["epsilon_spent"] > 0  # the figures are still shown
    write_report(report, tmp_path / "r.html", None)
    page = (tmp_path / "r.html").read_text()
    assert "No verified entries" in page and page.count("FAILED</span>") >= 3
    assert not (tmp_path / "r.json").exists()
