"""Ledger signing keys and the append-only, hash-chained, signed privacy ledger."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.accounting import DPEvent, compute_epsilon
from privacy.ledger import (
    GENESIS_HASH,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
    dataset_fingerprint,
    ledger_public_key_path,
    read_ledger,
    repair_torn_tail,
)
from privacy.signing_keys import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    create_signing_key,
    ensure_signing_key,
    load_public_key,
    load_signing_key,
    public_key_fingerprint,
)

DELTA = 1e-5
FINGERPRINT = dataset_fingerprint(["card stolen", "chest pain"], ["card", "cardiac"])
SPENDS = [
    ("run-a", 0, DPEvent(1.1, 0.02, 20)),
    ("run-a", 1, DPEvent(1.1, 0.02, 20)),
    ("run-b", 0, DPEvent(0.9, 0.05, 10)),
    ("run-b", 1, DPEvent(1.3, 0.02, 30)),
]


def _ledger(path: Path, key: Ed25519PrivateKey, **overrides: str) -> PrivacyLedger:
    node_id = overrides.get("node_id", "bank-1")
    fingerprint = overrides.get("dataset_fingerprint", FINGERPRINT)
    return PrivacyLedger(path, node_id=node_id, dataset_fingerprint=fingerprint, signing_key=key)


def _spend(
    ledger: PrivacyLedger, run_id: str, round_: int, event: DPEvent, **kw: float
) -> LedgerEntry:
    return ledger.append_spend(
        run_id=run_id,
        round=round_,
        event=event,
        clip_norm=kw.get("clip_norm", 1.0),
        delta=kw.get("delta", DELTA),
        budget_epsilon=kw.get("budget_epsilon", 8.0),
    )


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def filled(tmp_path: Path, key: Ed25519PrivateKey) -> PrivacyLedger:
    ledger = _ledger(tmp_path / "bank-1.jsonl", key)
    for run_id, round_, event in SPENDS:
        _spend(ledger, run_id, round_, event)
    return ledger


# ---------------------------------------------------------------- signing keys


def test_private_key_is_created_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        info = create_signing_key(tmp_path / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE(info.private_key_path.stat().st_mode) == 0o600
    assert info.private_key_path.name == PRIVATE_KEY_NAME
    assert info.public_key_path.name == PUBLIC_KEY_NAME
    assert not list((tmp_path / "keys").glob(".*tmp")), "temporary key file left behind"
    key = load_signing_key(info.private_key_path)
    assert public_key_fingerprint(load_public_key(info.public_key_path)) == info.fingerprint
    assert public_key_fingerprint(key.public_key()) == info.fingerprint


def test_existing_key_is_not_overwritten_without_force(tmp_path: Path) -> None:
    first = create_signing_key(tmp_path)
    before = first.private_key_path.read_bytes()
    with pytest.raises(FileExistsError, match="--force") as caught:
        create_signing_key(tmp_path)
    assert PRIVATE_KEY_NAME in str(caught.value)
    assert first.private_key_path.read_bytes() == before
    second = create_signing_key(tmp_path, force=True)
    assert second.fingerprint != first.fingerprint
    assert stat.S_IMODE(second.private_key_path.stat().st_mode) == 0o600


def test_fingerprint_is_stable_and_distinguishes_keys(tmp_path: Path) -> None:
    info = create_signing_key(tmp_path)
    key = load_signing_key(info.private_key_path)
    again = public_key_fingerprint(load_signing_key(info.private_key_path).public_key())
    assert again == public_key_fingerprint(key.public_key()) == info.fingerprint
    assert info.fingerprint.startswith("SHA256:") and len(info.fingerprint) == 7 + 43
    other = Ed25519PrivateKey.generate().public_key()
    assert public_key_fingerprint(other) != info.fingerprint


def test_group_or_world_readable_private_key_is_refused(tmp_path: Path) -> None:
    info = create_signing_key(tmp_path)
    info.private_key_path.chmod(0o644)
    with pytest.raises(ValueError, match="0644") as caught:
        load_signing_key(info.private_key_path)
    assert str(info.private_key_path) in str(caught.value)
    info.private_key_path.chmod(0o640)
    with pytest.raises(ValueError, match="0640"):
        load_signing_key(info.private_key_path)


def test_ensure_signing_key_creates_once_then_loads(tmp_path: Path) -> None:
    first = ensure_signing_key(tmp_path / "node")
    (tmp_path / "node" / PUBLIC_KEY_NAME).unlink()
    second = ensure_signing_key(tmp_path / "node")
    assert public_key_fingerprint(first.public_key()) == public_key_fingerprint(second.public_key())
    assert (tmp_path / "node" / PUBLIC_KEY_NAME).is_file()


def test_public_key_loader_refuses_a_private_key_file(tmp_path: Path) -> None:
    info = create_signing_key(tmp_path)
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(info.private_key_path)


# ---------------------------------------------------------------- data set fingerprint


def test_dataset_fingerprint_is_canonical_and_order_sensitive() -> None:
    base = dataset_fingerprint(["a b", "c"], ["x", "y"])
    assert base == dataset_fingerprint(["a b", "c"], ["x", "y"])
    assert base.startswith("sha256:") and len(base) == 7 + 64
    assert base != dataset_fingerprint(["c", "a b"], ["y", "x"])
    assert base != dataset_fingerprint(["a b", "c"], ["x", "z"])
    assert dataset_fingerprint(["ab", "c"], ["x", "y"]) != dataset_fingerprint(
        ["a", "bc"], ["x", "y"]
    )
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        dataset_fingerprint(["a", "b"], ["x"])
    with pytest.raises(TypeError, match="record 0"):
        dataset_fingerprint(["a"], [0])  # type: ignore[list-item]


# ---------------------------------------------------------------- appending


def test_entries_record_cumulative_epsilon_from_all_events(filled: PrivacyLedger) -> None:
    entries = filled.entries()
    assert len(entries) == len(SPENDS)
    events = [event for _, _, event in SPENDS]
    for index, entry in enumerate(entries):
        prefix = events[: index + 1]
        assert entry.epsilon == compute_epsilon(prefix, DELTA, "prv")
        assert entry.epsilon_rdp == compute_epsilon(prefix, DELTA, "rdp")
        assert entry.epsilon <= entry.epsilon_rdp
        assert entry.steps == events[index].steps  # this spend's steps, not cumulative
        assert entry.prev_hash == (entries[index - 1].hash if index else GENESIS_HASH)
    assert [e.epsilon for e in entries] == sorted(e.epsilon for e in entries)
    assert filled.events() == events
    assert filled.spent_epsilon(DELTA) == entries[-1].epsilon


def test_lines_have_the_documented_keys_in_order(filled: PrivacyLedger) -> None:
    first = json.loads(filled.path.read_text().splitlines()[0])
    assert list(first) == [
        "version", "node_id", "dataset_fingerprint", "run_id", "round", "steps",
        "sample_rate", "noise_multiplier", "clip_norm", "delta", "accountant",
        "budget_epsilon", "epsilon", "epsilon_rdp", "timestamp", "prev_hash", "hash",
        "signature",
    ]  # fmt: skip
    assert first["version"] == 1 and first["accountant"] == "prv"
    assert first["timestamp"].endswith("+00:00")
    assert ledger_public_key_path(filled.path).is_file()


def test_projected_epsilon_adds_the_planned_spend(filled: PrivacyLedger) -> None:
    planned = DPEvent(1.1, 0.02, 40)
    prv, rdp = filled.projected_epsilon(planned, DELTA)
    events = [*filled.events(), planned]
    assert prv == compute_epsilon(events, DELTA, "prv")
    assert rdp == compute_epsilon(events, DELTA, "rdp")
    assert prv > filled.spent_epsilon(DELTA)


def test_append_refuses_another_data_set_or_node(
    filled: PrivacyLedger, key: Ed25519PrivateKey
) -> None:
    before = filled.path.read_bytes()
    other_data = dataset_fingerprint(["x"], ["y"])
    for ledger, field in (
        (_ledger(filled.path, key, dataset_fingerprint=other_data), "dataset_fingerprint"),
        (_ledger(filled.path, key, node_id="bank-2"), "node_id"),
    ):
        with pytest.raises(LedgerError, match=field) as caught:
            _spend(ledger, "run-c", 0, DPEvent(1.0, 0.02, 5))
        assert caught.value.kind == "mismatch"
    assert filled.path.read_bytes() == before


def test_append_refuses_a_different_delta(filled: PrivacyLedger) -> None:
    before = filled.path.read_bytes()
    with pytest.raises(LedgerError, match="does not compose") as caught:
        _spend(filled, "run-c", 0, DPEvent(1.0, 0.02, 5), delta=1e-6)
    assert caught.value.kind == "mismatch"
    with pytest.raises(LedgerError, match="δ"):
        filled.projected_epsilon(DPEvent(1.0, 0.02, 5), 1e-6)
    assert filled.path.read_bytes() == before


def test_append_refuses_a_ledger_signed_with_another_key(filled: PrivacyLedger) -> None:
    stranger = _ledger(filled.path, Ed25519PrivateKey.generate())
    with pytest.raises(LedgerError) as caught:
        _spend(stranger, "run-c", 0, DPEvent(1.0, 0.02, 5))
    assert caught.value.kind == "bad_signature" and caught.value.line == 1


def test_append_refuses_a_broken_chain(filled: PrivacyLedger) -> None:
    lines = filled.path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["epsilon"] = entry["epsilon"] / 2
    lines[1] = json.dumps(entry) + "\n"
    filled.path.write_text("".join(lines))
    with pytest.raises(LedgerError) as caught:
        _spend(filled, "run-c", 0, DPEvent(1.0, 0.02, 5))
    assert (caught.value.kind, caught.value.line) == ("edited", 2)
    assert str(filled.path) in str(caught.value) and "line 2" in str(caught.value)
    assert filled.path.read_text() == "".join(lines)


def test_torn_tail_is_reported_then_repaired(filled: PrivacyLedger) -> None:
    data = filled.path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = last_start + (len(data) - last_start) // 2
    filled.path.write_bytes(data[:cut])  # a crash in the middle of writing the last line
    with pytest.raises(LedgerError) as caught:
        filled.entries()
    assert (caught.value.kind, caught.value.line) == ("torn_tail", len(SPENDS))
    with pytest.raises(LedgerError, match="torn"):
        _spend(filled, "run-c", 0, DPEvent(1.0, 0.02, 5))
    assert repair_torn_tail(filled.path) == cut - last_start
    assert repair_torn_tail(filled.path) == 0
    assert len(filled.entries()) == len(SPENDS) - 1
    entry = _spend(filled, "run-c", 0, DPEvent(1.0, 0.02, 5))
    assert len(read_ledger(filled.path, filled.public_key)) == len(SPENDS)
    assert entry.prev_hash == filled.entries()[-2].hash


def test_unparseable_last_line_with_newline_is_a_torn_tail(filled: PrivacyLedger) -> None:
    with open(filled.path, "ab") as handle:
        handle.write(b"\x00\x00\x00\n")
    with pytest.raises(LedgerError) as caught:
        filled.entries()
    assert caught.value.kind == "torn_tail"
    assert repair_torn_tail(filled.path) == 4
    assert len(filled.entries()) == len(SPENDS)


def test_a_spend_survives_a_crash_before_release(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "hospital.jsonl"

    class SimulatedCrashError(Exception):
        pass

    def train_and_release(ledger: PrivacyLedger) -> None:
        _spend(ledger, "run-a", 0, DPEvent(1.0, 0.05, 25))
        raise SimulatedCrashError(
            "process died after the spend was written, before the update left"
        )

    with pytest.raises(SimulatedCrashError):
        train_and_release(_ledger(path, key))
    restarted = _ledger(path, key)  # a new process on the same file
    assert restarted.events() == [DPEvent(1.0, 0.05, 25)]
    planned = DPEvent(1.0, 0.05, 25)
    prv, _ = restarted.projected_epsilon(planned, DELTA)
    assert prv == compute_epsilon([DPEvent(1.0, 0.05, 50)], DELTA)
    assert prv > compute_epsilon([planned], DELTA)


def test_epsilon_agrees_with_dp_accounting_pld(filled: PrivacyLedger) -> None:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    accountant = PLDAccountant()
    for event in filled.events():
        mechanism = PoissonSampledDpEvent(
            event.sample_rate, GaussianDpEvent(event.noise_multiplier)
        )
        accountant.compose(mechanism, event.steps)
    pld = accountant.get_epsilon(DELTA)
    recorded = filled.entries()[-1].epsilon
    assert abs(recorded - pld) / pld < 0.03


def test_append_rejects_bad_arguments(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    ledger = _ledger(tmp_path / "l.jsonl", key)
    with pytest.raises(ValueError, match="round"):
        _spend(ledger, "run", -1, DPEvent(1.0, 0.1, 1))
    with pytest.raises(ValueError, match="clip_norm"):
        _spend(ledger, "run", 0, DPEvent(1.0, 0.1, 1), clip_norm=0.0)
    with pytest.raises(ValueError, match="run_id"):
        _spend(ledger, "", 0, DPEvent(1.0, 0.1, 1))
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        _ledger(tmp_path / "l.jsonl", key, dataset_fingerprint="md5:abc")
    assert not (tmp_path / "l.jsonl").exists() or not (tmp_path / "l.jsonl").read_bytes()
    assert ledger.entries() == []
    assert ledger.spent_epsilon(DELTA) == 0.0
