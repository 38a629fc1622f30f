"""The node's privacy-budget ledger: append-only, hash-chained, signed JSONL on local disk.

Why it exists: a node may release an adapter update only after the privacy it cost is on
record, and that record must outlive processes, runs and restarts (Flower's context state
does not). One ledger file holds every DP-SGD spend against one data set (named by its
fingerprint) on one node. Each line is one spend: the raw event (σ, q, steps) plus what was
derived from it, chained to its predecessor by SHA-256 and signed with the node's Ed25519
key, so edits, deletions and reorderings show (see ``privacy.audit`` for the full check).

The raw events are the source of truth: the cumulative ε in each entry is recomputed by
``privacy.accounting.compute_epsilon`` over all events up to and including that entry (PRV,
the enforcing accountant, and RDP, the cross-check) and verification recomputes it again.

Durability (write-ahead): ``append_spend`` writes the complete line with one ``write`` call on
an ``O_APPEND`` descriptor, fsyncs the file (and the directory when the file is new) and only
then returns; the caller releases the update it paid for after that. Appenders on one host
are serialised with an exclusive ``flock``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.accounting import DPEvent, compute_epsilon
from privacy.durable_io import fsync_directory, write_bytes_atomic

#: Entry format version written by this module.
LEDGER_VERSION = 1
#: ``prev_hash`` of a ledger's first entry.
GENESIS_HASH = "0" * 64
#: The enforcing accountant whose ε each entry records as ``epsilon``.
LEDGER_ACCOUNTANT = "prv"
#: The fields of an entry, in the order they are written.
ENTRY_FIELDS: tuple[str, ...] = (
    "version",
    "node_id",
    "dataset_fingerprint",
    "run_id",
    "round",
    "steps",
    "sample_rate",
    "noise_multiplier",
    "clip_norm",
    "delta",
    "accountant",
    "budget_epsilon",
    "epsilon",
    "epsilon_rdp",
    "timestamp",
    "prev_hash",
    "hash",
    "signature",
)
#: The values ``LedgerError.kind`` takes.
ERROR_KINDS = frozenset(
    {
        "edited",
        "deleted",
        "reordered",
        "bad_signature",
        "epsilon_mismatch",
        "torn_tail",
        "malformed",
        "mismatch",
    }
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_LEDGER_FILE_MODE = 0o644  # entries hold no records, only signed DP metadata meant for audit


class LedgerError(ValueError):
    """A ledger file is damaged, tampered with, or does not fit the requested spend.

    Parameters
    ----------
    path
        The ledger file.
    kind
        One of ``ERROR_KINDS``: ``edited`` (an entry's hash does not match its content),
        ``deleted`` (an entry's predecessor is missing), ``reordered`` (entries out of chain
        order or repeated), ``bad_signature``, ``epsilon_mismatch`` (a recorded ε differs from
        the ε recomputed from the events), ``torn_tail`` (the last line was cut short by a
        crash), ``malformed`` (not a valid entry), ``mismatch`` (node, data set or δ differs).
    reason
        What is wrong, in words.
    line
        1-based line number of the offending entry, or None when the problem is the request
        rather than a stored line.
    """

    def __init__(self, path: Path, kind: str, reason: str, line: int | None = None) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ledger error kind {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.reason = reason
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason} [{kind}]")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.kind, self.reason, self.line))


def dataset_fingerprint(texts: Sequence[str], labels: Sequence[str]) -> str:
    """Fingerprint of a labelled data set: ``"sha256:<hex>"``.

    The hash covers the (text, label) pairs in the given order, each encoded as a compact
    UTF-8 JSON array on its own line after a format tag, so the encoding is unambiguous. The
    same records in another order give another fingerprint: fingerprint the data as stored,
    before any shuffling.

    Parameters
    ----------
    texts
        The records' texts.
    labels
        The records' label names (strings, so nodes that map labels alike agree).

    Raises
    ------
    ValueError
        If ``texts`` and ``labels`` differ in length.
    TypeError
        If a text or label is not a string.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    digest = hashlib.sha256(b"fedlora-dataset-v1\n")
    for index, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if not isinstance(text, str) or not isinstance(label, str):
            raise TypeError(
                f"record {index}: text and label must be strings, got "
                f"{type(text).__name__} and {type(label).__name__}"
            )
        digest.update(json.dumps([text, label], ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _int_field(data: Mapping[str, Any], name: str, minimum: int) -> int:
    value = data[name]
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be an integer >= {minimum}, got {value!r}",
    )
    return int(value)


def _float_field(data: Mapping[str, Any], name: str, low: float, high: float) -> float:
    # Floats only: the writer always writes floats, and an int would re-serialise differently.
    value = data[name]
    _require(
        isinstance(value, float) and math.isfinite(value) and low <= value <= high,
        f"{name} must be a finite float in [{low:g}, {high:g}], got {value!r}",
    )
    return float(value)


def _str_field(data: Mapping[str, Any], name: str) -> str:
    value = data[name]
    _require(isinstance(value, str) and value != "", f"{name} must be a non-empty string")
    return str(value)


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded DP-SGD spend; see the module docstring for the field semantics.

    ``steps`` counts the steps of this spend only; ``epsilon`` and ``epsilon_rdp`` are
    cumulative over all entries of the ledger up to and including this one.
    """

    version: int
    node_id: str
    dataset_fingerprint: str
    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    clip_norm: float
    delta: float
    accountant: str
    budget_epsilon: float
    epsilon: float
    epsilon_rdp: float
    timestamp: str
    prev_hash: str
    hash: str
    signature: str

    @property
    def event(self) -> DPEvent:
        """The raw DP event of this spend."""
        return DPEvent(self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def time(self) -> datetime:
        """``timestamp`` as an aware UTC datetime."""
        return datetime.fromisoformat(self.timestamp)

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict with keys in ``ENTRY_FIELDS`` order."""
        return {name: getattr(self, name) for name in ENTRY_FIELDS}

    def to_json_line(self) -> str:
        """The entry as one ledger line (ASCII JSON, ending in a newline)."""
        return (
            json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
            + "\n"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerEntry:
        """Validate a parsed ledger line and build the entry.

        Hash and signature are *not* checked here (see ``scan_ledger``).

        Raises
        ------
        ValueError
            If a field is missing, unexpected, of the wrong type or out of range.
        """
        missing = [name for name in ENTRY_FIELDS if name not in data]
        extra = sorted(set(data) - set(ENTRY_FIELDS))
        _require(not missing, f"missing field(s): {', '.join(missing)}")
        _require(not extra, f"unexpected field(s): {', '.join(extra)}")
        version = _int_field(data, "version", 1)
        _require(version == LEDGER_VERSION, f"unsupported ledger version {version}")
        fingerprint = _str_field(data, "dataset_fingerprint")
        _require(
            _FINGERPRINT.fullmatch(fingerprint) is not None,
            f"dataset_fingerprint must look like sha256:<64 hex>, got {fingerprint!r}",
        )
        accountant = _str_field(data, "accountant")
        _require(
            accountant == LEDGER_ACCOUNTANT,
            f"accountant must be {LEDGER_ACCOUNTANT!r}, got {accountant!r}",
        )
        timestamp = _str_field(data, "timestamp")
        try:
            when = datetime.fromisoformat(timestamp)
        except ValueError:
            raise ValueError(f"timestamp is not ISO-8601: {timestamp!r}") from None
        _require(when.utcoffset() == timedelta(0), f"timestamp must be in UTC, got {timestamp!r}")
        for name in ("prev_hash", "hash"):
            _require(
                isinstance(data[name], str) and _HEX64.fullmatch(data[name]) is not None,
                f"{name} must be 64 lowercase hex digits",
            )
        noise = _float_field(data, "noise_multiplier", 0.0, math.inf)
        rate = _float_field(data, "sample_rate", 0.0, 1.0)
        _require(noise > 0 and rate > 0, "noise_multiplier and sample_rate must be > 0")
        delta = _float_field(data, "delta", 0.0, 1.0)
        _require(0 < delta < 1, f"delta must be in (0, 1), got {delta!r}")
        clip = _float_field(data, "clip_norm", 0.0, math.inf)
        budget = _float_field(data, "budget_epsilon", 0.0, math.inf)
        _require(clip > 0 and budget > 0, "clip_norm and budget_epsilon must be > 0")
        return cls(
            version=version,
            node_id=_str_field(data, "node_id"),
            dataset_fingerprint=fingerprint,
            run_id=_str_field(data, "run_id"),
            round=_int_field(data, "round", 0),
            steps=_int_field(data, "steps", 0),
            sample_rate=rate,
            noise_multiplier=noise,
            clip_norm=clip,
            delta=delta,
            accountant=accountant,
            budget_epsilon=budget,
            epsilon=_float_field(data, "epsilon", 0.0, math.inf),
            epsilon_rdp=_float_field(data, "epsilon_rdp", 0.0, math.inf),
            timestamp=timestamp,
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
            signature=_str_field(data, "signature"),
        )


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 hex of an entry's canonical JSON, ``hash`` and ``signature`` left out.

    Canonical JSON: sorted keys, separators ``(",", ":")``, ASCII only, no NaN.

    Parameters
    ----------
    entry
        A parsed ledger line or ``LedgerEntry.to_dict()``.
    """
    body = {key: value for key, value in entry.items() if key not in ("hash", "signature")}
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def sign_hash(entry_hash_hex: str, signing_key: Ed25519PrivateKey) -> str:
    """Base64 Ed25519 signature over the ASCII bytes of an entry hash.

    Parameters
    ----------
    entry_hash_hex
        The entry's ``hash`` (64 hex digits).
    signing_key
        The node's ledger signing key.
    """
    return base64.b64encode(signing_key.sign(entry_hash_hex.encode("ascii"))).decode("ascii")


def make_entry(
    *,
    prev_hash: str,
    node_id: str,
    dataset_fingerprint: str,
    run_id: str,
    round: int,
    event: DPEvent,
    clip_norm: float,
    delta: float,
    budget_epsilon: float,
    epsilon: float,
    epsilon_rdp: float,
    timestamp: datetime,
    signing_key: Ed25519PrivateKey,
) -> LedgerEntry:
    """Build, hash and sign an entry (nothing is written; ``PrivacyLedger.append_spend`` is
    how spends are recorded, this is its building block).

    Parameters
    ----------
    prev_hash
        ``hash`` of the previous entry, or ``GENESIS_HASH``.
    node_id, dataset_fingerprint, run_id, round, clip_norm, delta, budget_epsilon
        As the entry fields.
    event
        The spend (σ, q, steps of this spend).
    epsilon, epsilon_rdp
        Cumulative ε (PRV and RDP) including this event, from ``compute_epsilon``.
    timestamp
        An aware datetime; stored in UTC.
    signing_key
        The node's ledger signing key.

    Raises
    ------
    ValueError
        If a value would make a malformed entry.
    """
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    body: dict[str, Any] = {
        "version": LEDGER_VERSION,
        "node_id": node_id,
        "dataset_fingerprint": dataset_fingerprint,
        "run_id": run_id,
        "round": round,
        "steps": event.steps,
        "sample_rate": float(event.sample_rate),
        "noise_multiplier": float(event.noise_multiplier),
        "clip_norm": float(clip_norm),
        "delta": float(delta),
        "accountant": LEDGER_ACCOUNTANT,
        "budget_epsilon": float(budget_epsilon),
        "epsilon": float(epsilon),
        "epsilon_rdp": float(epsilon_rdp),
        "timestamp": timestamp.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        "prev_hash": prev_hash,
    }
    digest = entry_hash(body)
    body["hash"] = digest
    body["signature"] = sign_hash(digest, signing_key)
    return LedgerEntry.from_dict(body)


@dataclass(frozen=True)
class LedgerScan:
    """What ``scan_ledger`` found: the entries that passed every check, and the first problem.

    Parameters
    ----------
    entries
        The entries before the first problem (all of them when ``error`` is None).
    error
        The first problem in file order, or None.
    lines
        Number of lines in the file (a torn last line counts).
    """

    entries: tuple[LedgerEntry, ...]
    error: LedgerError | None
    lines: int


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_line(raw: bytes) -> dict[str, Any]:
    """One line as a JSON object; ValueError says why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    for name in ("hash", "prev_hash", "signature"):
        if not isinstance(value.get(name), str):
            raise ValueError(f"no {name} string")
    return value


def _split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """The file's lines and whether the last one lacks its newline."""
    if not data:
        return [], False
    parts = data.split(b"\n")
    if parts[-1] == b"":
        return parts[:-1], False
    return parts, True


def _chain_problem(
    line: int, entry: Mapping[str, Any], expected_prev: str, first_line: Mapping[str, int]
) -> tuple[str, str] | None:
    """Why ``entry`` at ``line`` does not follow its predecessor, as (kind, reason), or None.

    ``first_line`` maps every hash-valid entry hash in the file to the line it first occurs
    on: a predecessor found on a *later* (or a non-adjacent earlier) line means the entries
    are out of order; a predecessor found nowhere means an entry was deleted.
    """
    own = first_line.get(entry["hash"])
    if own is not None and own != line:
        return "reordered", f"this entry repeats line {own}"
    prev = entry["prev_hash"]
    if prev == expected_prev:
        return None
    if prev == GENESIS_HASH:
        return "reordered", "a ledger's first entry (prev_hash 0…0) appears after other entries"
    where = first_line.get(prev)
    if where is not None and where > line:
        return "reordered", f"its predecessor is at line {where}, after it: entries were swapped"
    if where is not None:
        return "reordered", f"its predecessor is at line {where}, not directly before it"
    if line == 1:
        return "deleted", f"it follows entry {prev[:12]}…, which is missing: entries were deleted"
    return (
        "deleted",
        f"it follows entry {prev[:12]}…, which is missing: an entry before line {line} was deleted",
    )


def _check_signature(entry: Mapping[str, Any], public_key: Ed25519PublicKey) -> str | None:
    try:
        signature = base64.b64decode(entry["signature"], validate=True)
        public_key.verify(signature, str(entry["hash"]).encode("ascii"))
    except (InvalidSignature, binascii.Error, ValueError):
        return "the signature does not verify with the public key"
    return None


def _identity_problem(first: LedgerEntry, entry: LedgerEntry) -> str | None:
    for name in ("node_id", "dataset_fingerprint", "delta"):
        if getattr(entry, name) != getattr(first, name):
            return (
                f"{name} is {getattr(entry, name)!r} but line 1 has {getattr(first, name)!r}; "
                "one ledger holds one node, one data set and one δ"
            )
    return None


def parse_ledger(data: bytes, path: Path, public_key: Ed25519PublicKey | None = None) -> LedgerScan:
    """Check a ledger's bytes line by line and stop at the first problem.

    Per line, in order: JSON parse (a bad *last* line, or one without its newline, is a torn
    tail; a bad earlier line is malformed), recomputed hash (``edited``), chain to the
    previous line (``deleted`` / ``reordered``), signature (when ``public_key`` is given),
    field validation (``malformed``), same node / data set / δ as line 1 (``mismatch``).
    Recorded ε values are not recomputed here; ``privacy.audit.verify_ledger`` does that.

    Parameters
    ----------
    data
        The file's content.
    path
        The file's name, for messages.
    public_key
        The node's public key; None skips signature checks.
    """
    lines, torn = _split_lines(data)
    parsed: list[dict[str, Any] | ValueError] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        try:
            obj = _parse_line(raw)
        except ValueError as exc:
            parsed.append(exc)
            continue
        parsed.append(obj)
        if entry_hash(obj) == obj["hash"]:
            first_line.setdefault(obj["hash"], number)

    entries: list[LedgerEntry] = []

    def stop(kind: str, reason: str, line: int) -> LedgerScan:
        return LedgerScan(tuple(entries), LedgerError(path, kind, reason, line), len(lines))

    expected_prev = GENESIS_HASH
    for number, item in enumerate(parsed, start=1):
        last = number == len(parsed)
        if last and torn:
            return stop(
                "torn_tail",
                "the last line has no newline: an append was interrupted (crash mid-write) "
                "and nothing was released for it; repair_torn_tail() removes it",
                number,
            )
        if isinstance(item, ValueError):
            if last:
                return stop(
                    "torn_tail",
                    f"the last line is {item}: an append was interrupted; "
                    "repair_torn_tail() removes it",
                    number,
                )
            return stop("malformed", f"the line is {item}", number)
        obj = item
        recomputed = entry_hash(obj)
        if recomputed != obj["hash"]:
            return stop(
                "edited",
                f"the entry was changed after it was written: its content hashes to "
                f"{recomputed[:12]}…, its recorded hash is {str(obj['hash'])[:12]}…",
                number,
            )
        chain = _chain_problem(number, obj, expected_prev, first_line)
        if chain is not None:
            return stop(chain[0], chain[1], number)
        if public_key is not None:
            bad = _check_signature(obj, public_key)
            if bad is not None:
                return stop("bad_signature", bad, number)
        try:
            entry = LedgerEntry.from_dict(obj)
        except ValueError as exc:
            return stop("malformed", f"not a valid entry: {exc}", number)
        mismatch = _identity_problem(entries[0], entry) if entries else None
        if mismatch is not None:
            return stop("mismatch", mismatch, number)
        entries.append(entry)
        expected_prev = entry.hash
    return LedgerScan(tuple(entries), None, len(lines))


@contextmanager
def _locked(path: Path, flags: int, lock: int) -> Iterator[int]:
    fd = os.open(path, flags, _LEDGER_FILE_MODE)
    try:
        fcntl.flock(fd, lock)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def scan_ledger(path: Path, public_key: Ed25519PublicKey | None = None) -> LedgerScan:
    """``parse_ledger`` on a file, read under a shared lock (no append can interleave).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    """
    path = Path(path)
    with _locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
        data = _read_fd(fd)
    return parse_ledger(data, path, public_key)


def read_ledger(path: Path, public_key: Ed25519PublicKey | None = None) -> list[LedgerEntry]:
    """All entries of a ledger file, or ``LedgerError`` for its first problem.

    Raises
    ------
    LedgerError
        As found by ``parse_ledger``.
    FileNotFoundError
        If there is no such file.
    """
    scan = scan_ledger(path, public_key)
    if scan.error is not None:
        raise scan.error
    return list(scan.entries)


def ledger_public_key_path(ledger_path: Path) -> Path:
    """Where a ledger's public key is kept beside it: ``<ledger stem>.pub.pem``."""
    ledger_path = Path(ledger_path)
    return ledger_path.with_name(ledger_path.stem + ".pub.pem")


def repair_torn_tail(path: Path) -> int:
    """Remove a torn last line (see ``LedgerError`` kind ``torn_tail``) from a ledger file.

    Safe for the privacy guarantee: ``append_spend`` writes a spend and fsyncs it *before*
    returning, and callers release an update only after it returned. A line cut short by a
    crash therefore belongs to a spend whose update never left the node, and nothing that was
    released loses its charge. Only the torn line is removed: the bytes after the last
    newline, or a final line that is not valid JSON. The file is fsynced afterwards.

    Parameters
    ----------
    path
        The ledger file.

    Returns
    -------
    int
        The number of bytes removed (0 when the tail was intact).
    """
    path = Path(path)
    with _locked(path, os.O_RDWR, fcntl.LOCK_EX) as fd:
        data = _read_fd(fd)
        if not data:
            return 0
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                _parse_line(data[start:-1])
            except ValueError:
                keep = start
            else:
                return 0
        os.ftruncate(fd, keep)
        os.fsync(fd)
    return len(data) - keep


class PrivacyLedger:
    """The privacy ledger of one node and one data set, stored at ``path``.

    Every method re-reads the file, so several ``PrivacyLedger`` objects (or processes) on
    one file see each other's spends; appends are serialised with ``flock``. A ledger is
    tied to one signing key: entries signed with another key are refused, so replacing the
    node's key means starting a new ledger file (and keeping the old one for audit).

    Parameters
    ----------
    path
        The JSONL file (created on the first spend).
    node_id
        This node's id; every entry of the file must carry it.
    dataset_fingerprint
        ``dataset_fingerprint(...)`` of the data set the spends are charged to.
    signing_key
        The node's Ed25519 ledger key: signs new entries and checks existing ones.
    """

    def __init__(
        self,
        path: Path,
        *,
        node_id: str,
        dataset_fingerprint: str,
        signing_key: Ed25519PrivateKey,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty string")
        if _FINGERPRINT.fullmatch(dataset_fingerprint) is None:
            raise ValueError(
                f"dataset_fingerprint must look like sha256:<64 hex>, got {dataset_fingerprint!r}"
            )
        self._path = Path(path)
        self._node_id = node_id
        self._fingerprint = dataset_fingerprint
        self._signing_key = signing_key
        self._public_key = signing_key.public_key()

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def node_id(self) -> str:
        """The node this ledger belongs to."""
        return self._node_id

    @property
    def dataset_fingerprint(self) -> str:
        """The data set the spends are charged to."""
        return self._fingerprint

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half of the signing key; entries must verify with it."""
        return self._public_key

    def _checked(self, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        if entries:
            first = entries[0]
            for name, mine in (
                ("node_id", self._node_id),
                ("dataset_fingerprint", self._fingerprint),
            ):
                theirs = getattr(first, name)
                if theirs != mine:
                    raise LedgerError(
                        self._path,
                        "mismatch",
                        f"the file's {name} is {theirs!r}, this ledger's is {mine!r}: "
                        "it belongs to another node or data set",
                        1,
                    )
        return entries

    def entries(self) -> list[LedgerEntry]:
        """All entries, after checking parse, hashes, chain, signatures and identity.

        Recorded ε values are not recomputed (that is ``privacy.audit.verify_ledger``'s job
        and costs one accountant call per entry).

        Raises
        ------
        LedgerError
            On the first problem in the file.
        """
        try:
            scan = scan_ledger(self._path, self._public_key)
        except FileNotFoundError:
            return []
        if scan.error is not None:
            raise scan.error
        return self._checked(list(scan.entries))

    def events(self) -> list[DPEvent]:
        """The raw DP events of all entries, in order."""
        return [entry.event for entry in self.entries()]

    def _check_delta(self, entries: Sequence[LedgerEntry], delta: float) -> None:
        if entries and entries[0].delta != delta:
            raise LedgerError(
                self._path,
                "mismatch",
                f"δ={delta!r} differs from δ={entries[0].delta!r} of the earlier entries: ε at "
                "different δ does not compose simply, so one ledger keeps one δ",
            )

    def spent_epsilon(self, delta: float) -> float:
        """ε (PRV) spent so far, recomputed from the recorded events.

        Parameters
        ----------
        delta
            The ledger's δ (must equal the recorded one once there are entries).

        Raises
        ------
        LedgerError
            If the file fails its checks or ``delta`` differs from the recorded δ.
        """
        entries = self.entries()
        self._check_delta(entries, delta)
        return compute_epsilon([entry.event for entry in entries], delta, LEDGER_ACCOUNTANT)

    def projected_epsilon(self, event: DPEvent, delta: float) -> tuple[float, float]:
        """ε after a planned spend, as (PRV, RDP): what budget enforcement checks before
        training.

        Parameters
        ----------
        event
            The planned spend.
        delta
            The ledger's δ.

        Raises
        ------
        LedgerError
            If the file fails its checks or ``delta`` differs from the recorded δ.
        """
        entries = self.entries()
        self._check_delta(entries, delta)
        events = [*(entry.event for entry in entries), event]
        return (
            compute_epsilon(events, delta, LEDGER_ACCOUNTANT),
            compute_epsilon(events, delta, "rdp"),
        )

    def append_spend(
        self,
        *,
        run_id: str,
        round: int,
        event: DPEvent,
        clip_norm: float,
        delta: float,
        budget_epsilon: float,
    ) -> LedgerEntry:
        """Record a DP-SGD spend durably; release the update it paid for only afterwards.

        The cumulative ε (PRV and RDP) is recomputed from all recorded events plus this one.
        The line is written with one ``write`` on an ``O_APPEND`` descriptor and fsynced (the
        directory too when the file is new) before this returns. A spend that takes the node
        past ``budget_epsilon`` is still recorded: the steps were taken; enforcing the budget
        is ``projected_epsilon``'s job, before training.

        Parameters
        ----------
        run_id
            The federation run.
        round
            The round within the run (≥ 0).
        event
            The spend: σ, q and the number of steps of this spend.
        clip_norm
            Per-sample clipping norm C used.
        delta
            δ of the guarantee; must equal the δ of earlier entries.
        budget_epsilon
            The node's total ε budget, recorded for the audit.

        Returns
        -------
        LedgerEntry
            The entry written.

        Raises
        ------
        LedgerError
            If the existing file fails its checks (torn tail included: nothing is appended to
            a broken chain), belongs to another node or data set, or has another δ.
        ValueError
            If an argument is out of range.
        """
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty string")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        for name, value in (("clip_norm", clip_norm), ("budget_epsilon", budget_epsilon)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (0 < delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        spend = DPEvent(float(event.noise_multiplier), float(event.sample_rate), int(event.steps))
        self._path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        with _locked(self._path, flags, fcntl.LOCK_EX) as fd:
            data = _read_fd(fd)
            is_new = not data
            scan = parse_ledger(data, self._path, self._public_key)
            if scan.error is not None:
                raise scan.error
            entries = self._checked(list(scan.entries))
            self._check_delta(entries, float(delta))
            events = [*(entry.event for entry in entries), spend]
            entry = make_entry(
                prev_hash=entries[-1].hash if entries else GENESIS_HASH,
                node_id=self._node_id,
                dataset_fingerprint=self._fingerprint,
                run_id=run_id,
                round=round,
                event=spend,
                clip_norm=clip_norm,
                delta=delta,
                budget_epsilon=budget_epsilon,
                epsilon=compute_epsilon(events, delta, LEDGER_ACCOUNTANT),
                epsilon_rdp=compute_epsilon(events, delta, "rdp"),
                timestamp=datetime.now(timezone.utc),
                signing_key=self._signing_key,
            )
            if is_new:
                pem = self._public_key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                write_bytes_atomic(ledger_public_key_path(self._path), pem)
            line = entry.to_json_line().encode("ascii")
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(
                    f"{self._path}: short write ({written} of {len(line)} bytes); the ledger "
                    "now has a torn tail and the spend is not recorded — release nothing"
                )
            os.fsync(fd)
        if is_new:
            fsync_directory(self._path.parent)
        return entry
