"""Ed25519 keys that sign a node's privacy ledger.

A hash chain alone shows that a ledger was not edited only as long as nobody can rebuild the
chain after an edit, and anybody can. Each ledger entry is therefore also signed with a key
that never leaves the node; a compliance officer checks the signatures against the public key
(or its fingerprint) the node enrolled, so an edited ledger cannot be passed off as genuine.

The private key is an unencrypted PKCS8 PEM file readable by its owner only: it is created
with mode 0600 in a single ``open`` call (never world-readable, not even briefly) and refused
on load when group or others may read it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.durable_io import fsync_directory, write_bytes_atomic

#: File name of the private signing key inside a key directory.
PRIVATE_KEY_NAME = "ledger_signing_key.pem"
#: File name of the matching public key inside a key directory.
PUBLIC_KEY_NAME = "ledger_signing_key.pub.pem"
#: Permission bits a private key file must not have (any access by group or others).
_FORBIDDEN_MODE_BITS = stat.S_IRWXG | stat.S_IRWXO


@dataclass(frozen=True)
class KeyInfo:
    """Where a freshly created signing key was written, and its public fingerprint.

    Parameters
    ----------
    private_key_path
        The PKCS8 PEM private key (mode 0600).
    public_key_path
        The SubjectPublicKeyInfo PEM public key.
    fingerprint
        ``public_key_fingerprint`` of the public key, e.g. ``"SHA256:3q2+7w..."``.
    """

    private_key_path: Path
    public_key_path: Path
    fingerprint: str


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """OpenSSH-style fingerprint of an Ed25519 public key.

    ``"SHA256:"`` followed by the unpadded base64 of the SHA-256 of the 32 raw public key
    bytes. The format matches OpenSSH's, the value does not: ``ssh-keygen -l`` hashes the SSH
    wire encoding of the key rather than its raw bytes.

    Parameters
    ----------
    public_key
        The key to fingerprint.

    Returns
    -------
    str
        The fingerprint, stable for a given key.
    """
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(raw).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private_key(target: Path, pem: bytes, *, force: bool) -> None:
    # The key goes into a temporary file created 0600 with O_EXCL, so its bytes are never
    # readable by anyone else; it then becomes ``target`` by a hard link (which refuses to
    # replace an existing file) or, with ``force``, by an atomic rename.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _refusal(path: Path) -> FileExistsError:
    return FileExistsError(
        f"{path} already exists; refusing to overwrite a ledger signing key (ledgers signed "
        f"with it would no longer verify against the new one). Use --force to replace it."
    )


def create_signing_key(directory: Path, *, force: bool = False) -> KeyInfo:
    """Generate a node's Ed25519 ledger signing key and write both halves to ``directory``.

    Writes ``ledger_signing_key.pem`` (PKCS8, unencrypted, mode 0600) and
    ``ledger_signing_key.pub.pem``. The directory is created (mode 0700) if needed.

    Parameters
    ----------
    directory
        Where the key files go.
    force
        Replace existing key files. Ledgers signed with the old key then no longer verify
        against the new public key.

    Returns
    -------
    KeyInfo
        The paths written and the public key fingerprint.

    Raises
    ------
    FileExistsError
        If either key file exists and ``force`` is false.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise _refusal(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write_private_key(private_path, pem, force=force)
    except FileExistsError:
        raise _refusal(private_path) from None
    fsync_directory(directory)
    write_bytes_atomic(public_path, _public_pem(key.public_key()))
    return KeyInfo(private_path, public_path, public_key_fingerprint(key.public_key()))


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a ledger signing key, refusing one that group or others can access.

    Parameters
    ----------
    path
        A PKCS8 PEM file holding an unencrypted Ed25519 private key.

    Raises
    ------
    ValueError
        If the file's mode gives group or others any access, it is not a PEM private key,
        or it holds a key of another type.
    """
    path = Path(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & _FORBIDDEN_MODE_BITS:
        raise ValueError(
            f"{path} has mode {mode:04o}: a ledger signing key must be readable by its owner "
            f"only (run: chmod 600 {path})"
        )
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM (SubjectPublicKeyInfo) file.

    Parameters
    ----------
    path
        The public key file, e.g. ``ledger_signing_key.pub.pem``.

    Raises
    ------
    ValueError
        If the file is not a PEM public key or holds a key of another type.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def ensure_signing_key(directory: Path) -> Ed25519PrivateKey:
    """Load the node's signing key from ``directory``, creating it on first use.

    A missing public key file is rewritten from the private key.

    Parameters
    ----------
    directory
        The node's key directory.

    Returns
    -------
    Ed25519PrivateKey
        The signing key.

    Raises
    ------
    FileExistsError
        If only the public key file exists (the private half was lost; replacing the pair
        needs ``create_signing_key(..., force=True)``).
    ValueError
        As ``load_signing_key``.
    """
    directory = Path(directory)
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    if not private_path.exists():
        try:
            create_signing_key(directory)
        except FileExistsError:
            if not private_path.exists():  # an orphaned public key, not a concurrent creator
                raise
    key = load_signing_key(private_path)
    if not public_path.exists():
        write_bytes_atomic(public_path, _public_pem(key.public_key()))
    return key
