"""``fedlora certs``: the CA, the SuperLink's TLS certificate and the nodes' keys.

Checked the way they are used: TLS handshakes (``ssl`` and gRPC, which Flower uses) against
the generated chain, and the node keys loaded with Flower 1.42's own loaders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from privacy.signing_keys import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    create_signing_key,
    load_public_key,
    public_key_fingerprint,
)
from server.certificates import (
    DeploymentIdentity,
    create_deployment_identity,
    describe_identity,
    ssh_public_key_fingerprint,
)
from sim.cli import main

NAME = "superlink.test"
NODES = ("hospital-a", "bank_b.2")


def _init(out: Path, **overrides: Any) -> DeploymentIdentity:
    kwargs: dict[str, Any] = {
        "server_names": [NAME],
        "server_ips": ["127.0.0.1"],
        "node_ids": list(NODES),
    }
    kwargs.update(overrides)
    return create_deployment_identity(out, **kwargs)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One identity shared by the read-only tests of this module."""
    out = tmp_path_factory.mktemp("deployment") / "certs"
    _init(out)
    return out


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mode."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ----------------------------------------------------------------------------- layout


def test_layout_and_modes(deployment: Path) -> None:
    for name in ("ca.key", "server.key"):
        assert _mode(deployment / name) == 0o600, name
    for name in ("ca.crt", "server.crt"):
        assert (deployment / name).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    for directory in (deployment, deployment / "nodes"):
        assert _mode(directory) == 0o700
    for node_id in NODES:
        node_dir = deployment / "nodes" / node_id
        assert _mode(node_dir) == 0o700
        assert _mode(node_dir / "auth_key") == 0o600
        assert _mode(node_dir / PRIVATE_KEY_NAME) == 0o600
        assert (
            (node_dir / "auth_key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        )
        fields = (node_dir / "auth_key.pub").read_text().split()
        assert fields[0] == "ecdsa-sha2-nistp384"
        assert fields[1].startswith("AAAA")
        assert fields[2:] == [node_id]
        assert (node_dir / PUBLIC_KEY_NAME).exists()
    # server.key: PKCS8, unencrypted
    assert (deployment / "server.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    # nothing else: no temporary files left behind by the atomic writes
    names = {str(p.relative_to(deployment)) for p in deployment.rglob("*") if p.is_file()}
    expected = {"ca.crt", "ca.key", "server.crt", "server.key"}
    for node_id in NODES:
        expected |= {
            f"nodes/{node_id}/{n}"
            for n in ("auth_key", "auth_key.pub", PRIVATE_KEY_NAME, PUBLIC_KEY_NAME)
        }
    assert names == expected


def test_ca_and_server_certificate_extensions(deployment: Path) -> None:
    ca = _cert(deployment / "ca.crt")
    server = _cert(deployment / "server.crt")

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)  # self-signed
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert ca_key.curve.name == "secp384r1"
    ca_days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    assert 3650 <= ca_days <= 3651

    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME]  # no localhost unless given
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    server_key = server.public_key()
    assert isinstance(server_key, ec.EllipticCurvePublicKey)
    assert server_key.curve.name == "secp384r1"
    server_days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert 365 <= server_days <= 366


def test_days_and_several_names(tmp_path: Path) -> None:
    identity = _init(
        tmp_path / "c",
        server_names=[NAME, "localhost"],
        server_ips=["127.0.0.1", "::1"],
        node_ids=["n1"],
        days=90,
    )
    server = _cert(identity.server_cert_path)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME, "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert (server.not_valid_after_utc - datetime.now(timezone.utc)).days in (89, 90)


# ----------------------------------------------------------------------------- TLS


def _handshake(out: Path, server_hostname: str, cafile: Path | None = None) -> bytes:
    """TLS over a socket pair: server.crt/server.key against a client trusting ca.crt."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(out / "server.crt", out / "server.key")
    client_context = ssl.create_default_context(cafile=cafile or out / "ca.crt")
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(tls.recv(4))
        except (ssl.SSLError, OSError) as exc:
            server_errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            return tls.recv(4)
    finally:
        client_sock.close()
        thread.join(10)
        server_sock.close()


def test_tls_handshake_verifies_server_name_and_ip(deployment: Path) -> None:
    assert _handshake(deployment, NAME) == b"ping"
    assert _handshake(deployment, "127.0.0.1") == b"ping"  # the IP SAN


def test_tls_handshake_rejects_wrong_hostname(deployment: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|doesn't match"):
        _handshake(deployment, "wrong.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(deployment, "localhost")  # not added unless given


def test_tls_handshake_rejects_another_ca(deployment: Path, tmp_path: Path) -> None:
    other = _init(tmp_path / "other", node_ids=["x"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(deployment, NAME, cafile=other.ca_cert_path)


def test_https_as_flower_serves_and_dials_it(deployment: Path, tmp_path: Path) -> None:
    """Flower 1.42's SuperLink serves its APIs with uvicorn (ssl_certfile/ssl_keyfile) and
    SuperNodes dial with its protobuf-over-HTTPS client (root certificates as bytes or a
    path); do exactly that against the generated files."""
    uvicorn = pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from flwr.supercore.protobuf.client import ProtobufClient

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(deployment / "server.crt"),
        ssl_keyfile=str(deployment / "server.key"),
        log_level="error",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        address = f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        ca = deployment / "ca.crt"
        for root_certificates in (ca.read_bytes(), str(ca)):
            client = ProtobufClient.from_server_address(address, False, root_certificates, [])
            with client._client as http:
                assert http.get(f"https://{address}/").status_code == 204
        other = _init(tmp_path / "other", node_ids=["x"])
        client = ProtobufClient.from_server_address(
            address, False, other.ca_cert_path.read_bytes(), []
        )
        with client._client as http, pytest.raises(httpx.ConnectError, match="verify failed"):
            http.get(f"https://{address}/")
    finally:
        server.should_exit = True
        thread.join(10)


def test_grpc_channel_as_flower_opens_it(deployment: Path) -> None:
    """Flower's gRPC transports (e.g. ``--fleet-api-type grpc-adapter``) load the same PEM
    bytes into ``grpc.ssl_server_credentials``; a client dials with ca.crt."""
    grpc = pytest.importorskip("grpc")
    from flwr.supercore.grpc import create_channel

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    credentials = grpc.ssl_server_credentials(
        [((deployment / "server.key").read_bytes(), (deployment / "server.crt").read_bytes())],
        root_certificates=(deployment / "ca.crt").read_bytes(),
        require_client_auth=False,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        ca = (deployment / "ca.crt").read_bytes()
        by_ip = create_channel(f"127.0.0.1:{port}", insecure=False, root_certificates=ca)
        grpc.channel_ready_future(by_ip).result(timeout=10)
        by_name = grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(ca),
            options=[("grpc.ssl_target_name_override", NAME)],
        )
        grpc.channel_ready_future(by_name).result(timeout=10)
        by_ip.close()
        by_name.close()
    finally:
        server.stop(0)


# ----------------------------------------------------------------------------- node keys


def _flower_loaders() -> tuple[Callable[[Path], Any], Callable[[Path], bytes]]:
    """Flower 1.42's own loaders for the SuperNode key files (cryptography's if absent)."""
    try:
        from flwr.cli.supernode.register import try_load_public_key
        from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication
    except ImportError:  # pragma: no cover - Flower's internals moved

        def load_private(path: Path) -> Any:
            return serialization.load_ssh_private_key(path.read_bytes(), None)

        def load_public(path: Path) -> bytes:
            key = serialization.load_ssh_public_key(path.read_bytes())
            return key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )

        return load_private, load_public

    def flower_private(path: Path) -> Any:
        # exactly what `flower-supernode --auth-supernode-private-key PATH` does
        args = argparse.Namespace(
            auth_supernode_private_key=str(path), auth_supernode_public_key=None
        )
        loaded = _try_setup_client_authentication(args)
        assert loaded is not None
        return loaded[0]

    return flower_private, try_load_public_key  # `flwr supernode register PATH`


def test_node_keys_load_with_flowers_loaders(deployment: Path) -> None:
    load_private, load_public = _flower_loaders()
    for node_id in NODES:
        node_dir = deployment / "nodes" / node_id
        private_key = load_private(node_dir / "auth_key")
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        assert private_key.curve.name == "secp384r1"
        registered = load_public(node_dir / "auth_key.pub")
        # the SuperLink compares the registered key with the one the SuperNode presents
        presented = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert registered == presented
        public_key = serialization.load_pem_public_key(registered)
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        signature = private_key.sign(b"node auth", ec.ECDSA(hashes.SHA256()))
        public_key.verify(signature, b"node auth", ec.ECDSA(hashes.SHA256()))


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_auth_key_fingerprint_matches_ssh_keygen(deployment: Path) -> None:
    public_path = deployment / "nodes" / NODES[0] / "auth_key.pub"
    output = subprocess.run(
        ["ssh-keygen", "-lf", str(public_path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output[0] == "384"
    assert output[1] == ssh_public_key_fingerprint(public_path.read_bytes())


# ----------------------------------------------------------------------------- overwrite


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    _init(out)
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"ca\.crt already exists") as info:
        _init(out)
    assert "--force" in str(info.value)
    assert _snapshot(out) == before
    # a new node next to existing files: still refused, still nothing written
    with pytest.raises(FileExistsError, match=r"ca\.crt"):
        _init(out, node_ids=["new-node"])
    assert _snapshot(out) == before
    assert not (out / "nodes" / "new-node").exists()


def test_refusal_names_the_one_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    stray = out / "nodes" / "b" / "auth_key.pub"
    stray.parent.mkdir(parents=True)
    stray.write_text("ecdsa-sha2-nistp384 AAAA old\n")
    with pytest.raises(FileExistsError) as info:
        _init(out, node_ids=["a", "b"])
    assert str(info.value).startswith(f"{stray} already exists")
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["auth_key.pub"]
    assert stray.read_text() == "ecdsa-sha2-nistp384 AAAA old\n"


def test_force_regenerates_but_keeps_ledger_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    first = _init(out)
    before = _snapshot(out)
    second = _init(out, force=True)
    after = _snapshot(out)
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        assert after[name][0] != before[name][0], name
        assert after[name][1] == before[name][1]
    for node_id in NODES:
        for name in ("auth_key", "auth_key.pub"):
            assert after[f"nodes/{node_id}/{name}"] != before[f"nodes/{node_id}/{name}"]
        for name in (PRIVATE_KEY_NAME, PUBLIC_KEY_NAME):
            assert after[f"nodes/{node_id}/{name}"] == before[f"nodes/{node_id}/{name}"]
    assert [n.ledger_key_fingerprint for n in second.nodes] == [
        n.ledger_key_fingerprint for n in first.nodes
    ]
    assert not any(n.ledger_key_created for n in second.nodes)
    assert len(second.kept) == 2 * len(NODES)
    assert second.ca_fingerprint != first.ca_fingerprint


def test_existing_ledger_key_is_reused(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    enrolled = create_signing_key(out / "nodes" / "clinic")  # e.g. from `fedlora node init`
    identity = _init(out, node_ids=["clinic"])
    (node,) = identity.nodes
    assert node.ledger_key_fingerprint == enrolled.fingerprint
    assert not node.ledger_key_created
    assert set(identity.kept) == {enrolled.private_key_path, enrolled.public_key_path}


def test_unusable_ledger_key_stops_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    readable = create_signing_key(out / "nodes" / "a")
    os.chmod(readable.private_key_path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        _init(out, node_ids=["a"])
    orphan = out / "nodes" / "b" / PUBLIC_KEY_NAME
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(readable.public_key_path.read_bytes())
    os.chmod(readable.private_key_path, 0o600)
    with pytest.raises(ValueError, match="without its private key"):
        _init(out, node_ids=["a", "b"], force=True)
    assert not (out / "ca.crt").exists()
    assert not (out / "nodes" / "a" / "auth_key").exists()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_ids": ["a", "b", "a"]}, "'a' is given twice"),
        ({"node_ids": ["Node1", "node1"]}, "differ only in case"),
        ({"node_ids": []}, "at least one node ID"),
        ({"node_ids": [""]}, "must not be empty"),
        ({"node_ids": ["../escape"]}, "starts with '.'"),
        ({"node_ids": ["a/b"]}, "contains '/'"),
        ({"node_ids": ["."]}, "starts with '.'"),
        ({"node_ids": [".hidden"]}, "starts with '.'"),
        ({"node_ids": ["x" * 200]}, "at most 128"),
        ({"server_ips": ["127.0.0.300"]}, "not an IPv4 or IPv6 address"),
        ({"server_ips": ["10.0.0.0/8"]}, "not an IPv4 or IPv6 address"),
        ({"server_ips": ["0.0.0.0"]}, "unspecified address"),
        ({"server_ips": ["::1", "::1"]}, "given twice"),
        ({"server_names": ["bad_name.example"]}, "label 'bad_name'"),
        ({"server_names": ["-lead.example"]}, "label '-lead'"),
        ({"server_names": ["*.example.org"]}, r"label '\*'"),
        ({"server_names": ["a..b"]}, "label ''"),
        ({"server_names": ["10.0.0.5"]}, "is an IP address"),
        ({"server_names": ["host.123"]}, "all digits"),
        ({"server_names": ["bücher.example"]}, "IDNA"),
        ({"server_names": ["superlink.test."]}, "trailing dot"),
        ({"server_names": [""]}, "must not be empty"),
        ({"server_names": [NAME, "SUPERLINK.test"]}, "given twice"),
        ({"days": 0}, "between 1 and 3650"),
        ({"days": 4000}, "between 1 and 3650"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    out = tmp_path / "certs"
    with pytest.raises(ValueError, match=message):
        _init(out, **overrides)
    assert not out.exists()


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "certs").write_text("not a directory")
    with pytest.raises(ValueError, match="is not a directory"):
        _init(tmp_path / "certs" / "inner")


# ----------------------------------------------------------------------------- show


def test_describe_identity(deployment: Path) -> None:
    description = describe_identity(deployment)
    assert description.problems == ()
    assert description.warnings == ()
    ca, server = description.certificates
    assert ca.is_ca and not server.is_ca
    assert server.sans == (f"DNS:{NAME}", "IP:127.0.0.1")
    assert (
        server.fingerprint
        == _cert(deployment / "server.crt").fingerprint(hashes.SHA256()).hex(":").upper()
    )
    assert [n.node_id for n in description.nodes] == sorted(NODES)
    node = description.nodes[0]
    assert node.auth_key_type == "ecdsa-sha2-nistp384"
    assert node.auth_key_curve == "secp384r1"
    assert node.auth_key_comment == node.node_id


def test_describe_identity_expiry(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    _init(out, days=10, node_ids=["a"])
    soon = describe_identity(out)
    assert soon.problems == ()
    assert any("server.crt expires in 9 days" in w for w in soon.warnings)
    later = describe_identity(out, now=datetime.now(timezone.utc) + timedelta(days=11))
    assert any("server.crt EXPIRED" in p for p in later.problems)
    early = describe_identity(out, now=datetime.now(timezone.utc) - timedelta(days=1))
    assert any("not valid yet" in p for p in early.problems)


def test_describe_identity_finds_mismatches(deployment: Path, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    shutil.copytree(deployment, out)
    other = _init(tmp_path / "other", node_ids=list(NODES))
    shutil.copy(other.server_cert_path, out / "server.crt")
    shutil.copy(other.nodes[0].auth_public_key_path, out / "nodes" / NODES[0] / "auth_key.pub")
    os.chmod(out / "ca.key", 0o640)
    problems = "\n".join(describe_identity(out).problems)
    assert "server.crt was not issued by" in problems
    assert "server.key does not match" in problems
    assert f"nodes/{NODES[0]}/auth_key does not match" in problems
    assert "ca.key is a private key with mode 0640" in problems


# ----------------------------------------------------------------------------- CLI


def test_cli_init_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    argv = ["certs", "init", "--out", str(out), "--server-name", NAME]
    argv += ["--server-ip", "127.0.0.1", "--nodes", "n1", "n2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    ca = _cert(out / "ca.crt")
    for expected in (
        str(out / "ca.key"),
        str(out / "nodes" / "n2" / "auth_key.pub"),
        ca.fingerprint(hashes.SHA256()).hex(":").upper(),
        ssh_public_key_fingerprint((out / "nodes" / "n1" / "auth_key.pub").read_bytes()),
        "flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.crt",
        "--ssl-keyfile server.key --enable-supernode-auth --host 127.0.0.1 --port 8000",
        f"flwr supernode register {out / 'nodes' / 'n1' / 'auth_key.pub'}",
        f"flower-supernode --superlink {NAME}:8000 --root-certificates ca.crt",
        "--auth-supernode-private-key NODE_DIR/auth_key",
    ):
        assert expected in printed, expected

    # refused without --force: exit 2, the file named, nothing changed
    before = _snapshot(out)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert f"fedlora certs: {out / 'ca.crt'} already exists" in captured.err
    assert _snapshot(out) == before

    # --force: regenerated, ledger keys kept and said so
    assert main([*argv, "--force"]) == 0
    printed = capsys.readouterr().out
    assert "kept the existing ledger signing keys" in printed
    assert str(out / "nodes" / "n1" / PRIVATE_KEY_NAME) in printed

    assert main(["certs", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    server = _cert(out / "server.crt")
    ledger = public_key_fingerprint(load_public_key(out / "nodes" / "n2" / PUBLIC_KEY_NAME))
    for expected in (
        f"subject:     CN={NAME}",
        "subject:     CN=fedlora CA for superlink.test,O=fedlora",
        f"SANs:        DNS:{NAME}, IP:127.0.0.1",
        server.fingerprint(hashes.SHA256()).hex(":").upper(),
        f"not after:   {server.not_valid_after_utc:%Y-%m-%d}",
        "node n2",
        "ecdsa-sha2-nistp384, secp384r1",
        ssh_public_key_fingerprint((out / "nodes" / "n2" / "auth_key.pub").read_bytes()),
        ledger,
    ):
        assert expected in shown, expected


def test_cli_show_warns_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    soon = tmp_path / "soon"
    _init(soon, days=5, node_ids=["a"])
    assert main(["certs", "show", str(soon)]) == 0
    printed = capsys.readouterr().out
    assert "WARNING:" in printed and "server.crt expires in 4 days" in printed
    assert "renew with: fedlora certs init" in printed

    expired = tmp_path / "expired"
    _init(expired, days=30, node_ids=["a"], now=datetime.now(timezone.utc) - timedelta(days=40))
    assert main(["certs", "show", str(expired)]) == 1
    printed = capsys.readouterr().out
    assert "PROBLEM:" in printed and "server.crt EXPIRED" in printed

    assert main(["certs", "show", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["certs", "show", str(tmp_path / "empty")]) == 2
    assert "holds no certificates" in capsys.readouterr().err


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    argv = ["certs", "init", "--out", str(out), "--server-name", NAME]
    assert main([*argv, "--nodes", "a", "a"]) == 2
    assert "fedlora certs: node ID 'a' is given twice" in capsys.readouterr().err
    assert main([*argv, "--server-ip", "localhost", "--nodes", "a"]) == 2
    assert "--server-ip 'localhost' is not an IPv4 or IPv6 address" in capsys.readouterr().err
    assert not out.exists()


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["certs", "init", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("examples:", "--server-name", "--server-ip", "--nodes", "--force", "0600"):
        assert expected in text, expected
    with pytest.raises(SystemExit):
        main(["certs", "show", "--help"])
    assert "examples:" in capsys.readouterr().out
