"""Transport identity of a deployment: a CA, the SuperLink's TLS certificate, node keys.

A deployed federation needs three kinds of key material before the first round: a TLS
certificate for the SuperLink (so nodes know they talk to the real server and traffic is
encrypted), one SuperNode authentication key pair per node (so only enrolled nodes can join:
``flower-superlink --enable-supernode-auth``) and, per node, the Ed25519 key that signs its
privacy ledger. Getting these right by hand (``openssl`` incantations, SANs, the exact
OpenSSH key format Flower insists on, file modes) is where deployments go wrong, so
``fedlora certs init`` makes all of them in one checked step and ``fedlora certs show``
reads them back.

Layout written by :func:`create_deployment_identity` (``DIR`` is the output directory)::

    DIR/ca.crt                          CA certificate (PEM)
    DIR/ca.key                          CA private key (PEM, PKCS8, 0600)
    DIR/server.crt                      server certificate (PEM)
    DIR/server.key                      server private key (PEM, PKCS8 unencrypted, 0600)
    DIR/nodes/<ID>/auth_key             SuperNode auth private key, OpenSSH format (0600)
    DIR/nodes/<ID>/auth_key.pub         "ecdsa-sha2-nistp384 AAAA... <ID>"
    DIR/nodes/<ID>/ledger_signing_key.pem / .pub.pem   (privacy.signing_keys)

All keys are ECDSA P-384 (the ledger key is Ed25519, see :mod:`privacy.signing_keys`).
Flower 1.42 loads the node key with ``cryptography``'s ``load_ssh_private_key`` (it must be
an EC key) and ``flwr supernode register`` accepts only an OpenSSH public key on a NIST
curve. The SuperLink serves its APIs over HTTPS (uvicorn, i.e. Python's ``ssl``) from
``--ssl-certfile``/``--ssl-keyfile``, and SuperNodes verify it against ``--root-certificates``
(``ca.crt``), checking the DNS or IP SAN they dialled.

Every input is validated and every target path checked before anything is written: a
refusal (existing file without ``force``, bad input) leaves the directory untouched. Each
file is written atomically (temporary file, fsync, rename), private keys with mode 0600 from
the start, new directories with mode 0700. Existing ledger signing keys are never replaced,
not even with ``force``: they sign the node's privacy ledger, and a new key would make the
ledger's signatures unverifiable against the key the compliance officer enrolled.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privacy.durable_io import atomic_writer
from privacy.signing_keys import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    ensure_signing_key,
    load_public_key,
    load_signing_key,
    public_key_fingerprint,
)

#: CA certificate file name inside the output directory.
CA_CERT_NAME = "ca.crt"
#: CA private key file name.
CA_KEY_NAME = "ca.key"
#: SuperLink TLS certificate file name.
SERVER_CERT_NAME = "server.crt"
#: SuperLink TLS private key file name.
SERVER_KEY_NAME = "server.key"
#: Directory (inside the output directory) holding one sub-directory per node.
NODES_DIR_NAME = "nodes"
#: SuperNode authentication private key file name inside a node directory.
AUTH_KEY_NAME = "auth_key"
#: SuperNode authentication public key file name inside a node directory.
AUTH_PUBLIC_KEY_NAME = "auth_key.pub"

#: Validity of the CA certificate.
CA_VALIDITY_DAYS = 3650
#: Default validity of the server certificate.
DEFAULT_SERVER_DAYS = 365
#: ``describe_identity`` warns about certificates that expire within this many days.
EXPIRY_WARNING_DAYS = 30
#: Longest node ID accepted.
MAX_NODE_ID_LENGTH = 128

#: Mode of private key files and of the directories this module creates.
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
DIRECTORY_MODE = 0o700

_CURVE = ec.SECP384R1
_SIGNATURE_HASH = hashes.SHA384
#: Certificates start this long before "now", so that a peer whose clock is a little
#: behind does not reject a freshly made certificate as not yet valid.
_BACKDATE = timedelta(minutes=5)
_NODE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_GROUP_OTHER_BITS = stat.S_IRWXG | stat.S_IRWXO

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class WrittenFile:
    """One file :func:`create_deployment_identity` wrote.

    Parameters
    ----------
    path
        Where it is.
    mode
        Its permission bits as written (0o600 for private keys).
    what
        A short description, e.g. ``"CA certificate"``.
    """

    path: Path
    mode: int
    what: str


@dataclass(frozen=True)
class NodeIdentity:
    """A node's keys after :func:`create_deployment_identity`.

    Parameters
    ----------
    node_id
        The node ID, also the name of its directory under ``nodes/``.
    directory
        ``DIR/nodes/<ID>``.
    auth_key_path, auth_public_key_path
        The SuperNode authentication key pair (OpenSSH formats).
    auth_key_fingerprint
        OpenSSH-style fingerprint of the authentication public key (``"SHA256:..."``, as
        ``ssh-keygen -lf auth_key.pub`` prints it).
    ledger_key_path, ledger_public_key_path
        The node's Ed25519 ledger signing key pair.
    ledger_key_fingerprint
        ``privacy.signing_keys.public_key_fingerprint`` of the ledger public key.
    ledger_key_created
        False when the ledger signing key existed already and was kept.
    """

    node_id: str
    directory: Path
    auth_key_path: Path
    auth_public_key_path: Path
    auth_key_fingerprint: str
    ledger_key_path: Path
    ledger_public_key_path: Path
    ledger_key_fingerprint: str
    ledger_key_created: bool


@dataclass(frozen=True)
class DeploymentIdentity:
    """What :func:`create_deployment_identity` wrote.

    Parameters
    ----------
    out
        The output directory.
    server_names, server_ips
        The server certificate's DNS and IP subject alternative names.
    ca_cert_path, ca_key_path, server_cert_path, server_key_path
        The CA and server files.
    ca_fingerprint, server_fingerprint
        SHA-256 fingerprints of the certificates' DER bytes (``"AB:CD:..."``, as
        ``openssl x509 -noout -fingerprint -sha256`` prints them).
    ca_not_after, server_not_after
        End of the certificates' validity (UTC).
    nodes
        One entry per node ID, in the order given.
    written
        Every file written, in the order written.
    kept
        Existing ledger signing key files that were left as they were.
    """

    out: Path
    server_names: tuple[str, ...]
    server_ips: tuple[IPAddress, ...]
    ca_cert_path: Path
    ca_key_path: Path
    server_cert_path: Path
    server_key_path: Path
    ca_fingerprint: str
    server_fingerprint: str
    ca_not_after: datetime
    server_not_after: datetime
    nodes: tuple[NodeIdentity, ...]
    written: tuple[WrittenFile, ...]
    kept: tuple[Path, ...]


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate as :func:`describe_identity` read it.

    Parameters
    ----------
    path
        The PEM file.
    subject, issuer
        RFC 4514 strings, e.g. ``"CN=superlink.example.org"``.
    sans
        Subject alternative names as ``"DNS:name"`` / ``"IP:address"``.
    fingerprint
        SHA-256 of the DER bytes, ``"AB:CD:..."``.
    not_before, not_after
        Validity period (UTC).
    is_ca
        Whether the basic constraints say CA:TRUE.
    key_type
        E.g. ``"EC secp384r1"``.
    days_left
        Whole days from ``now`` until ``not_after`` (negative once expired).
    """

    path: Path
    subject: str
    issuer: str
    sans: tuple[str, ...]
    fingerprint: str
    not_before: datetime
    not_after: datetime
    is_ca: bool
    key_type: str
    days_left: int


@dataclass(frozen=True)
class NodeKeyInfo:
    """A node directory as :func:`describe_identity` read it.

    Parameters
    ----------
    node_id
        The directory name under ``nodes/``.
    auth_public_key_path
        ``auth_key.pub``, or None when missing.
    auth_key_type
        The OpenSSH key type, e.g. ``"ecdsa-sha2-nistp384"`` (None when missing).
    auth_key_curve
        The curve, e.g. ``"secp384r1"`` (None when missing or not an EC key).
    auth_key_fingerprint
        OpenSSH-style ``"SHA256:..."`` (None when missing).
    auth_key_comment
        The comment after the key (``init`` writes the node ID), or ``""``.
    ledger_public_key_path
        ``ledger_signing_key.pub.pem``, or None when missing.
    ledger_key_fingerprint
        ``privacy.signing_keys.public_key_fingerprint`` of it (None when missing).
    """

    node_id: str
    auth_public_key_path: Path | None
    auth_key_type: str | None
    auth_key_curve: str | None
    auth_key_fingerprint: str | None
    auth_key_comment: str
    ledger_public_key_path: Path | None
    ledger_key_fingerprint: str | None


@dataclass(frozen=True)
class IdentityDescription:
    """Everything :func:`describe_identity` found in a directory.

    Parameters
    ----------
    directory
        The directory read.
    certificates
        ``ca.crt``, ``server.crt`` and any other ``*.crt`` there, in that order.
    nodes
        One entry per directory under ``nodes/``, sorted by node ID.
    warnings
        Things to act on soon (a certificate expiring within 30 days, a missing file).
    problems
        Things that are wrong now: an expired or not yet valid certificate, a server
        certificate not issued by ``ca.crt``, a private key that does not match its
        certificate or public key, a private key others can read, an unreadable file.
    """

    directory: Path
    certificates: tuple[CertificateInfo, ...]
    nodes: tuple[NodeKeyInfo, ...]
    warnings: tuple[str, ...]
    problems: tuple[str, ...]


# ----------------------------------------------------------------------------- validation


def validate_node_ids(node_ids: Sequence[str]) -> tuple[str, ...]:
    """Check node IDs: non-empty, unique, safe as directory names.

    Parameters
    ----------
    node_ids
        The IDs, in order.

    Returns
    -------
    tuple[str, ...]
        The same IDs.

    Raises
    ------
    ValueError
        If there are none, one is empty, too long, uses characters other than
        ``[A-Za-z0-9_.-]`` or starts with ``.``, or two are equal (ignoring case: they
        would share a directory on a case-insensitive file system).
    """
    if not node_ids:
        raise ValueError("give at least one node ID (--nodes ID ...)")
    seen: dict[str, str] = {}
    for node_id in node_ids:
        if not node_id:
            raise ValueError("node IDs must not be empty")
        if len(node_id) > MAX_NODE_ID_LENGTH:
            raise ValueError(
                f"node ID {node_id[:20]!r}... is {len(node_id)} characters long; at most "
                f"{MAX_NODE_ID_LENGTH} are allowed"
            )
        if node_id.startswith("."):
            raise ValueError(
                f"node ID {node_id!r} starts with '.'; node IDs name directories and must not "
                f"be hidden or relative ('.', '..')"
            )
        if not _NODE_ID.fullmatch(node_id):
            bad = sorted({c for c in node_id if not re.fullmatch(r"[A-Za-z0-9_.-]", c)})
            raise ValueError(
                f"node ID {node_id!r} contains {', '.join(map(repr, bad))}; node IDs name "
                f"directories and may only use letters, digits, '_', '.' and '-'"
            )
        folded = node_id.casefold()
        if folded in seen:
            other = seen[folded]
            detail = "is given twice" if other == node_id else f"and {other!r} differ only in case"
            raise ValueError(f"node ID {node_id!r} {detail}; node IDs must be unique")
        seen[folded] = node_id
    return tuple(node_ids)


def validate_server_name(name: str) -> str:
    """Check that ``name`` is a DNS host name a certificate can be issued for.

    Parameters
    ----------
    name
        E.g. ``"superlink.example.org"`` or ``"localhost"``.

    Returns
    -------
    str
        The same name.

    Raises
    ------
    ValueError
        If it is empty, an IP address (those go in ``--server-ip``), has a trailing dot,
        is longer than 253 characters, has a label that is empty, longer than 63 characters,
        starts or ends with ``-`` or uses characters other than letters, digits and ``-``
        (wildcards and underscores included), is not ASCII, or ends in an all-digit label.
    """
    if not name:
        raise ValueError("the server name must not be empty (--server-name)")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValueError(
            f"server name {name!r} is an IP address: give it with --server-ip instead (a DNS "
            f"name in a certificate never matches a connection made to an IP address)"
        )
    if not name.isascii():
        raise ValueError(
            f"server name {name!r} is not ASCII: give an internationalized name in its "
            f"IDNA form (xn--...)"
        )
    if name.endswith("."):
        raise ValueError(f"server name {name!r}: drop the trailing dot")
    if len(name) > 253:
        raise ValueError(f"server name {name[:20]!r}... is longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not _DNS_LABEL.fullmatch(label):
            raise ValueError(
                f"server name {name!r} is not a valid DNS name: label {label!r} must be 1 to "
                f"63 letters, digits or '-', not starting or ending with '-'"
            )
    if labels[-1].isdigit():
        raise ValueError(
            f"server name {name!r} is not a valid DNS name: its last label is all digits"
        )
    return name


def validate_server_names(names: Sequence[str]) -> tuple[str, ...]:
    """Check each server name (:func:`validate_server_name`) and that none repeats.

    Raises
    ------
    ValueError
        If there is none, one is invalid, or one is given twice (ignoring case).
    """
    if not names:
        raise ValueError("give the server's DNS name (--server-name NAME)")
    seen: set[str] = set()
    for name in names:
        validate_server_name(name)
        if name.lower() in seen:
            raise ValueError(f"server name {name!r} is given twice")
        seen.add(name.lower())
    return tuple(names)


def validate_server_ips(ips: Sequence[str]) -> tuple[IPAddress, ...]:
    """Parse the server's IP addresses.

    Parameters
    ----------
    ips
        IPv4 or IPv6 addresses as text, e.g. ``"127.0.0.1"``.

    Returns
    -------
    tuple[IPv4Address | IPv6Address, ...]
        The parsed addresses, in order.

    Raises
    ------
    ValueError
        If one does not parse, carries an IPv6 zone (``%eth0``), is the unspecified
        address (``0.0.0.0``, ``::``), or is given twice.
    """
    parsed: list[IPAddress] = []
    for text in ips:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ValueError(
                f"--server-ip {text!r} is not an IPv4 or IPv6 address (e.g. 127.0.0.1, "
                f"10.0.0.5, ::1; no ports, no networks)"
            ) from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(f"--server-ip {text!r}: a certificate cannot name an IPv6 zone")
        if address.is_unspecified:
            raise ValueError(
                f"--server-ip {text!r} is the unspecified address (what a server binds to), "
                f"not one clients connect to; give the address nodes dial"
            )
        if address in parsed:
            raise ValueError(f"--server-ip {text!r} is given twice")
        parsed.append(address)
    return tuple(parsed)


def validate_days(days: int) -> int:
    """Check the server certificate's validity in days (1 to the CA's 3650).

    Raises
    ------
    ValueError
        If ``days`` is below 1, or above the CA's validity (a certificate cannot be
        trusted beyond the expiry of the CA that issued it).
    """
    if not 1 <= days <= CA_VALIDITY_DAYS:
        raise ValueError(
            f"--days must be between 1 and {CA_VALIDITY_DAYS} (the CA's validity), got {days}"
        )
    return days


# ----------------------------------------------------------------------------- fingerprints


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate's DER bytes, ``"AB:CD:..."``.

    The same value ``openssl x509 -noout -fingerprint -sha256 -in FILE`` prints.
    """
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def ssh_public_key_fingerprint(openssh_line: bytes) -> str:
    """OpenSSH fingerprint of a public key line, ``"SHA256:..."`` (as ``ssh-keygen -lf``).

    Parameters
    ----------
    openssh_line
        ``b"ecdsa-sha2-nistp384 AAAA... [comment]"``.

    Returns
    -------
    str
        ``"SHA256:"`` and the unpadded base64 of the SHA-256 of the key's wire encoding.

    Raises
    ------
    ValueError
        If the line has no base64 key blob.
    """
    fields = openssh_line.split()
    if len(fields) < 2:
        raise ValueError("not an OpenSSH public key line (expected 'TYPE BASE64 [COMMENT]')")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError as exc:
        raise ValueError(f"the OpenSSH public key's base64 does not decode: {exc}") from exc
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ----------------------------------------------------------------------------- generation


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _serial() -> int:
    # 159 random bits: positive, at most 20 octets (RFC 5280 4.1.2.2), unpredictable.
    return int.from_bytes(os.urandom(20), "big") >> 1


def make_ca(
    common_name: str, now: datetime, days: int = CA_VALIDITY_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Make a self-signed P-384 CA: CA:TRUE (path length 0), keyCertSign and cRLSign.

    Parameters
    ----------
    common_name
        The subject's CN.
    now
        Start of the validity (backdated by five minutes for clock skew).
    days
        Validity in days.

    Returns
    -------
    tuple[EllipticCurvePrivateKey, Certificate]
        The CA key and certificate.
    """
    key = ec.generate_private_key(_CURVE())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlora"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _SIGNATURE_HASH())
    )
    return key, certificate


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    server_names: Sequence[str],
    server_ips: Sequence[IPAddress],
    now: datetime,
    days: int = DEFAULT_SERVER_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Make a P-384 TLS server certificate signed by the CA.

    Subject CN is the first server name; the SANs are every DNS name and IP address given
    (nothing else: ``localhost`` only when listed). CA:FALSE, digitalSignature, serverAuth.

    Parameters
    ----------
    ca_key, ca_certificate
        The issuing CA.
    server_names
        DNS names (validated, at least one).
    server_ips
        IP addresses.
    now
        Start of the validity (backdated by five minutes for clock skew).
    days
        Validity in days.

    Returns
    -------
    tuple[EllipticCurvePrivateKey, Certificate]
        The server key and certificate.
    """
    key = ec.generate_private_key(_CURVE())
    public = key.public_key()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in server_names]
    sans += [x509.IPAddress(address) for address in server_ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]))
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, _SIGNATURE_HASH())
    )
    return key, certificate


def make_node_auth_key(node_id: str) -> tuple[bytes, bytes]:
    """Make a SuperNode authentication key pair in the OpenSSH formats Flower 1.42 reads.

    ``flower-supernode --auth-supernode-private-key`` loads the private key with
    ``load_ssh_private_key`` (it must be an EC key); ``flwr supernode register`` loads the
    public key with ``load_ssh_public_key`` (it must be on a NIST curve). P-384 is the
    curve Flower itself generates.

    Parameters
    ----------
    node_id
        Written as the public key's comment.

    Returns
    -------
    tuple[bytes, bytes]
        The unencrypted OpenSSH private key and the one-line public key
        (``b"ecdsa-sha2-nistp384 AAAA... <node_id>\\n"``).
    """
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b" " + node_id.encode("ascii") + b"\n"


# ----------------------------------------------------------------------------- writing


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # atomic_writer's temporary file is created 0600 (mkstemp), so a private key is never
    # readable by others, not even before the rename; public files are opened up to 0644.
    with atomic_writer(path, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_directory(path: Path) -> None:
    # The directory, or the nearest ancestor that exists, must be a directory we can write.
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ValueError(f"{candidate} exists and is not a directory")
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise ValueError(f"cannot write to {candidate} (permission denied)")
            return


def _check_ledger_key(directory: Path) -> bool:
    """Whether a usable ledger signing key exists in ``directory`` (checked, not changed)."""
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    if private_path.exists():
        load_signing_key(private_path)  # ValueError if others can read it or it is no key
        return True
    if public_path.exists():
        raise ValueError(
            f"{public_path} exists without its private key {private_path.name}: fedlora certs "
            f"never replaces a ledger signing key (it signs the node's privacy ledger). "
            f"Restore the private key, or replace the pair deliberately with "
            f"'fedlora node init --dir {directory} --force'"
        )
    return False


def _refuse_existing(existing: Sequence[Path]) -> FileExistsError:
    first = existing[0]
    more = f" (and {len(existing) - 1} more: {', '.join(map(str, existing[1:]))})"
    return FileExistsError(
        f"{first} already exists{more if len(existing) > 1 else ''}; refusing to overwrite "
        f"key material, nothing was written. Use --force to regenerate the CA, server "
        f"certificate and node auth keys (existing ledger signing keys are always kept)"
    )


def create_deployment_identity(
    out: Path,
    server_names: Sequence[str],
    server_ips: Sequence[str],
    node_ids: Sequence[str],
    days: int = DEFAULT_SERVER_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> DeploymentIdentity:
    """Create a deployment's CA, server certificate and per-node keys under ``out``.

    Everything is validated and every target checked first; then all keys and
    certificates are generated in memory; only then is anything written (atomically, see
    the module docstring for the layout and modes).

    Parameters
    ----------
    out
        Output directory (created with mode 0700 if missing).
    server_names
        The SuperLink's DNS names; the first is the certificate's CN. All become DNS SANs.
    server_ips
        The SuperLink's IP addresses (text), each an IP SAN.
    node_ids
        One SuperNode per ID: ``out/nodes/<ID>/``.
    days
        Validity of the server certificate (the CA gets 3650 days).
    force
        Regenerate the CA, server certificate and node auth keys where they exist.
        Existing ledger signing keys are kept regardless.
    now
        Start of the validity; the current time by default.

    Returns
    -------
    DeploymentIdentity
        What was written and kept, with fingerprints.

    Raises
    ------
    ValueError
        On invalid input (see the ``validate_*`` functions), a target path that is a
        directory, or an existing ledger key that cannot be used; nothing is written.
    FileExistsError
        If a file to be written exists and ``force`` is false; nothing is written.
    """
    out = Path(out)
    names = validate_server_names(server_names)
    ips = validate_server_ips(server_ips)
    ids = validate_node_ids(node_ids)
    validate_days(days)
    now = now or datetime.now(timezone.utc)

    nodes_dir = out / NODES_DIR_NAME
    node_dirs = {node_id: nodes_dir / node_id for node_id in ids}
    targets = [out / CA_CERT_NAME, out / CA_KEY_NAME, out / SERVER_CERT_NAME, out / SERVER_KEY_NAME]
    for directory in node_dirs.values():
        targets += [directory / AUTH_KEY_NAME, directory / AUTH_PUBLIC_KEY_NAME]

    # -- check everything before writing anything
    for directory in (out, nodes_dir, *node_dirs.values()):
        _check_directory(directory)
    existing = []
    for path in targets:
        if path.is_dir():
            raise ValueError(f"{path} is a directory; it would be replaced by a key file")
        if os.path.lexists(path):
            existing.append(path)
    if existing and not force:
        raise _refuse_existing(existing)
    has_ledger_key = {node_id: _check_ledger_key(d) for node_id, d in node_dirs.items()}

    # -- generate in memory
    ca_key, ca_cert = make_ca(f"fedlora CA for {names[0]}", now)
    server_key, server_cert = make_server_certificate(ca_key, ca_cert, names, ips, now, days)
    auth_keys = {node_id: make_node_auth_key(node_id) for node_id in ids}

    # -- write
    for directory in (out, nodes_dir, *node_dirs.values()):
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    files: list[tuple[Path, bytes, int, str]] = [
        (out / CA_KEY_NAME, _private_pem(ca_key), PRIVATE_FILE_MODE, "CA private key"),
        (out / CA_CERT_NAME, ca_cert.public_bytes(pem), PUBLIC_FILE_MODE, "CA certificate"),
        (out / SERVER_KEY_NAME, _private_pem(server_key), PRIVATE_FILE_MODE, "server key"),
        (
            out / SERVER_CERT_NAME,
            server_cert.public_bytes(pem),
            PUBLIC_FILE_MODE,
            "server certificate",
        ),
    ]
    for node_id, (private, public) in auth_keys.items():
        directory = node_dirs[node_id]
        files.append((directory / AUTH_KEY_NAME, private, PRIVATE_FILE_MODE, "SuperNode auth key"))
        files.append(
            (
                directory / AUTH_PUBLIC_KEY_NAME,
                public,
                PUBLIC_FILE_MODE,
                "SuperNode auth public key",
            )
        )
    written: list[WrittenFile] = []
    for path, data, mode, what in files:
        _write_file(path, data, mode)
        written.append(WrittenFile(path, mode, what))

    kept: list[Path] = []
    nodes: list[NodeIdentity] = []
    for node_id in ids:
        directory = node_dirs[node_id]
        private_path, public_path = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
        public_existed = public_path.exists()
        ledger_key = ensure_signing_key(directory)
        if has_ledger_key[node_id]:
            kept.append(private_path)
        else:
            written.append(WrittenFile(private_path, _mode(private_path), "ledger signing key"))
        if public_existed:
            kept.append(public_path)
        else:
            written.append(WrittenFile(public_path, _mode(public_path), "ledger public key"))
        nodes.append(
            NodeIdentity(
                node_id=node_id,
                directory=directory,
                auth_key_path=directory / AUTH_KEY_NAME,
                auth_public_key_path=directory / AUTH_PUBLIC_KEY_NAME,
                auth_key_fingerprint=ssh_public_key_fingerprint(auth_keys[node_id][1]),
                ledger_key_path=private_path,
                ledger_public_key_path=public_path,
                ledger_key_fingerprint=public_key_fingerprint(ledger_key.public_key()),
                ledger_key_created=not has_ledger_key[node_id],
            )
        )
    return DeploymentIdentity(
        out=out,
        server_names=names,
        server_ips=ips,
        ca_cert_path=out / CA_CERT_NAME,
        ca_key_path=out / CA_KEY_NAME,
        server_cert_path=out / SERVER_CERT_NAME,
        server_key_path=out / SERVER_KEY_NAME,
        ca_fingerprint=certificate_fingerprint(ca_cert),
        server_fingerprint=certificate_fingerprint(server_cert),
        ca_not_after=ca_cert.not_valid_after_utc,
        server_not_after=server_cert.not_valid_after_utc,
        nodes=tuple(nodes),
        written=tuple(written),
        kept=tuple(kept),
    )


# ----------------------------------------------------------------------------- reading


def _key_type(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    return type(public_key).__name__.removeprefix("_").removesuffix("PublicKey") or "unknown"


def _sans(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    sans = [f"DNS:{name}" for name in extension.value.get_values_for_type(x509.DNSName)]
    sans += [f"IP:{ip}" for ip in extension.value.get_values_for_type(x509.IPAddress)]
    return tuple(sans)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def read_certificate(path: Path, now: datetime) -> CertificateInfo:
    """Read a PEM certificate into a :class:`CertificateInfo`.

    Raises
    ------
    ValueError
        If the file is not a PEM certificate.
    """
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    not_after = certificate.not_valid_after_utc
    return CertificateInfo(
        path=path,
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        sans=_sans(certificate),
        fingerprint=certificate_fingerprint(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=not_after,
        is_ca=_is_ca(certificate),
        key_type=_key_type(certificate.public_key()),
        days_left=(not_after - now).days,
    )


def _mode_problem(path: Path) -> str | None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _GROUP_OTHER_BITS:
        return f"{path} is a private key with mode {mode:04o}; run: chmod 600 {path}"
    return None


def _same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    def spki(key: PublicKeyTypes) -> bytes:
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return type(a) is type(b) and spki(a) == spki(b)


def _check_certificate_key(cert_path: Path, key_path: Path, problems: list[str]) -> None:
    problem = _mode_problem(key_path)
    if problem:
        problems.append(problem)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        problems.append(f"{key_path}: cannot read it as an unencrypted PEM private key: {exc}")
        return
    if not _same_public_key(key.public_key(), certificate.public_key()):
        problems.append(f"{key_path} does not match {cert_path} (a different key pair)")


def _check_validity(info: CertificateInfo, now: datetime, warnings: list[str]) -> str | None:
    when = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if info.not_before > now:
        start = info.not_before.strftime("%Y-%m-%d %H:%M UTC")
        return f"{info.path} is not valid yet (from {start}; is this machine's clock right?)"
    if info.not_after <= now:
        return f"{info.path} EXPIRED on {when}"
    if info.not_after - now <= timedelta(days=EXPIRY_WARNING_DAYS):
        warnings.append(f"{info.path} expires in {info.days_left} days ({when})")
    return None


def _describe_node(directory: Path, problems: list[str]) -> NodeKeyInfo:
    public_path = directory / AUTH_PUBLIC_KEY_NAME
    private_path = directory / AUTH_KEY_NAME
    key_type = curve = fingerprint = None
    comment = ""
    public_key: PublicKeyTypes | None = None
    if public_path.exists():
        line = public_path.read_bytes()
        fields = line.split(maxsplit=2)
        try:
            public_key = serialization.load_ssh_public_key(line)
            fingerprint = ssh_public_key_fingerprint(line)
        except (ValueError, UnsupportedAlgorithm) as exc:
            problems.append(f"{public_path} is not an OpenSSH public key: {exc}")
        else:
            key_type = fields[0].decode("ascii", "replace")
            comment = fields[2].decode("utf-8", "replace").strip() if len(fields) > 2 else ""
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                curve = public_key.curve.name
            else:
                problems.append(
                    f"{public_path} holds a {key_type} key; Flower's SuperNode authentication "
                    f"needs an ECDSA key on a NIST curve (fedlora uses P-384)"
                )
    if private_path.exists():
        problem = _mode_problem(private_path)
        if problem:
            problems.append(problem)
        try:
            private_key = serialization.load_ssh_private_key(private_path.read_bytes(), None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            problems.append(f"{private_path} is not an unencrypted OpenSSH private key: {exc}")
        else:
            if public_key is not None and not _same_public_key(
                private_key.public_key(), public_key
            ):
                problems.append(f"{private_path} does not match {public_path}")
    ledger_public = directory / PUBLIC_KEY_NAME
    ledger_fingerprint = None
    if ledger_public.exists():
        try:
            ledger_fingerprint = public_key_fingerprint(load_public_key(ledger_public))
        except ValueError as exc:
            problems.append(str(exc))
    ledger_private = directory / PRIVATE_KEY_NAME
    if ledger_private.exists():
        problem = _mode_problem(ledger_private)
        if problem:
            problems.append(problem)
    return NodeKeyInfo(
        node_id=directory.name,
        auth_public_key_path=public_path if public_path.exists() else None,
        auth_key_type=key_type,
        auth_key_curve=curve,
        auth_key_fingerprint=fingerprint,
        auth_key_comment=comment,
        ledger_public_key_path=ledger_public if ledger_public.exists() else None,
        ledger_key_fingerprint=ledger_fingerprint,
    )


def describe_identity(directory: Path, now: datetime | None = None) -> IdentityDescription:
    """Read back what :func:`create_deployment_identity` wrote, and check it.

    Nothing is written. Private keys are only opened to check that they match their
    certificate or public key and are not readable by others; on a machine that holds only
    public files (e.g. the compliance officer's) those checks are skipped.

    Parameters
    ----------
    directory
        The directory given to ``fedlora certs init --out``.
    now
        The time expiry is judged at; the current time by default.

    Returns
    -------
    IdentityDescription
        Certificates, node keys, warnings and problems.

    Raises
    ------
    ValueError
        If ``directory`` is missing or holds no certificate and no node directory.
    """
    directory = Path(directory)
    now = now or datetime.now(timezone.utc)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    preferred = [directory / CA_CERT_NAME, directory / SERVER_CERT_NAME]
    others = sorted(p for p in directory.glob("*.crt") if p not in preferred)
    cert_paths = [p for p in preferred if p.is_file()] + [p for p in others if p.is_file()]
    nodes_dir = directory / NODES_DIR_NAME
    node_dirs = sorted(p for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else []
    if not cert_paths and not node_dirs:
        raise ValueError(
            f"{directory} holds no certificates and no {NODES_DIR_NAME}/ directory; create "
            f"them with 'fedlora certs init --out {directory} ...'"
        )

    warnings: list[str] = []
    problems: list[str] = []
    certificates: list[CertificateInfo] = []
    for path in cert_paths:
        try:
            info = read_certificate(path, now)
        except ValueError as exc:
            problems.append(f"{path} is not a PEM certificate: {exc}")
            continue
        certificates.append(info)
        problem = _check_validity(info, now, warnings)
        if problem:
            problems.append(problem)

    ca_path, server_path = preferred
    for name, cert_path in ((CA_KEY_NAME, ca_path), (SERVER_KEY_NAME, server_path)):
        key_path = directory / name
        if key_path.exists() and cert_path.exists():
            _check_certificate_key(cert_path, key_path, problems)
    if ca_path.is_file() and server_path.is_file():
        try:
            server = x509.load_pem_x509_certificate(server_path.read_bytes())
            ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
            server.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            reason = str(exc) or "its signature does not verify with the CA's key"
            problems.append(f"{server_path} was not issued by {ca_path}: {reason}")
    elif server_path.is_file():
        warnings.append(f"{ca_path} is missing: nodes need it to verify {server_path}")

    nodes = [_describe_node(node_dir, problems) for node_dir in node_dirs]
    for node in nodes:
        if node.auth_public_key_path is None:
            warnings.append(
                f"{nodes_dir / node.node_id} has no {AUTH_PUBLIC_KEY_NAME} (nothing to register)"
            )
    return IdentityDescription(
        directory=directory,
        certificates=tuple(certificates),
        nodes=tuple(nodes),
        warnings=tuple(warnings),
        problems=tuple(problems),
    )
