"""``fedlora certs``: the transport identity of a deployment (CA, TLS, node keys).

Thin command layer over :mod:`server.certificates`: ``certs init`` creates the CA, the
SuperLink's TLS certificate and each SuperNode's authentication and ledger signing keys;
``certs show`` prints what a directory holds (subjects, SANs, fingerprints, expiry).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from server.certificates import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    CA_VALIDITY_DAYS,
    DEFAULT_SERVER_DAYS,
    EXPIRY_WARNING_DAYS,
    SERVER_CERT_NAME,
    SERVER_KEY_NAME,
    CertificateInfo,
    DeploymentIdentity,
    IdentityDescription,
    create_deployment_identity,
    describe_identity,
)

EPILOG_INIT = f"""\
examples:
  # a SuperLink reached as superlink.example.org (and 10.0.0.5), three hospitals:
  fedlora certs init --out certs --server-name superlink.example.org \\
      --server-ip 10.0.0.5 --nodes hospital-a hospital-b hospital-c
  # everything on one machine (local test deployment):
  fedlora certs init --out certs --server-name localhost --server-ip 127.0.0.1 --nodes n1 n2
  # renew: new CA, server certificate and auth keys; ledger signing keys are kept:
  fedlora certs init --out certs --server-name superlink.example.org --nodes hospital-a \\
      --force

writes (private keys mode 0600, new directories 0700):
  DIR/ca.crt, DIR/ca.key              CA (P-384, {CA_VALIDITY_DAYS} days)
  DIR/server.crt, DIR/server.key      SuperLink TLS certificate and key (P-384, --days)
  DIR/nodes/ID/auth_key, auth_key.pub SuperNode authentication key pair (OpenSSH, P-384)
  DIR/nodes/ID/ledger_signing_key.pem, .pub.pem
                                      the node's ledger signing key (only if it has none)

Nothing is overwritten without --force, and a refusal writes nothing. Existing ledger
signing keys are never replaced, not even with --force: they sign the node's privacy
ledger (use 'fedlora node init --force' to replace one deliberately).
"""

EPILOG_SHOW = f"""\
examples:
  fedlora certs show certs

Prints for every certificate its subject, issuer, SANs, SHA-256 fingerprint (as 'openssl
x509 -fingerprint -sha256' prints it) and validity, warning when it expires within
{EXPIRY_WARNING_DAYS} days; for every node its auth key type and fingerprint (as 'ssh-keygen -lf'
prints it) and its ledger signing key fingerprint. Also checks that server.crt was issued by
ca.crt and that private keys present match and are mode 0600. Reads only; run it on any
machine that holds (a copy of) the directory.

exit status: 0, or 1 when a certificate has expired or is not yet valid, or a check fails.
"""


#: Flower 1.42's SuperLink serves its Fleet, Control and Runtime APIs over HTTPS on one port.
SUPERLINK_PORT = 8000

_NEXT_STEPS = """\
next steps (Flower 1.42: every SuperLink API is HTTPS on port {port}):
  1. SuperLink ({name}): copy {ca}, {cert} and {key} there and run
       flower-superlink --ssl-ca-certfile {ca} --ssl-certfile {cert} \\
           --ssl-keyfile {key} --enable-supernode-auth --host 127.0.0.1 --port {port}
     The Control API on that port has no authentication in open-source Flower: keep it on
     loopback and let institutions reach only the Fleet API through a gateway
     (docs/deploy.md).
  2. register each node's auth public key, where the flwr CLI runs; its SuperLink
     connection (~/.flwr/config.toml) has address = "{name}:{port}" and
     root-certificates = "{ca}":
{register}
  3. each node: copy {ca} and its directory {nodes_dir}/<ID>/ (auth_key and the ledger
     signing key) to it, use that directory as the node's node-dir, and run
       flower-supernode --superlink {name}:{port} --root-certificates {ca} \\
           --auth-supernode-private-key NODE_DIR/auth_key \\
           --node-config 'node-dir=NODE_DIR data-path=... budget-epsilon=...'
     then delete that node's private keys here: they belong on the node only.
  4. give the compliance officer each node's ledger key fingerprint (above) or its
     ledger_signing_key.pub.pem.
  5. keep {ca_key} offline: Flower never reads it; it only signs certificates."""


def add_certs_parsers(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``certs init`` and ``certs show``."""
    certs = sub.add_parser(
        "certs",
        help="create and inspect TLS certificates and node keys for a deployment",
        description="Transport identity of a deployment: a CA, the SuperLink's TLS\n"
        "certificate, and per node a SuperNode authentication key (for flower-superlink\n"
        "--enable-supernode-auth) and a ledger signing key.\n\n"
        "  fedlora certs init --out certs --server-name NAME [--server-ip IP ...] --nodes ID ...\n"
        "  fedlora certs show certs",
        formatter_class=formatter,
    )
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = certs_sub.add_parser(
        "init",
        help="create the CA, server certificate and node keys",
        description="Create a CA, a SuperLink TLS certificate signed by it (DNS SANs from\n"
        "--server-name, IP SANs from --server-ip; nothing else, not even localhost, unless\n"
        "given) and, for each node ID, a SuperNode authentication key pair in the OpenSSH\n"
        "format Flower 1.42 requires (ECDSA P-384) plus the node's ledger signing key if it\n"
        "has none. Prints the files written, their fingerprints and where each file goes.",
        epilog=EPILOG_INIT,
        formatter_class=formatter,
    )
    init.add_argument(
        "--out",
        type=Path,
        required=True,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="output directory (created with mode 0700)",
    )
    init.add_argument(
        "--server-name",
        action="append",
        required=True,
        default=argparse.SUPPRESS,
        metavar="NAME",
        dest="server_names",
        help="DNS name nodes use to reach the SuperLink (repeat for more names; the first "
        "is the certificate's CN)",
    )
    init.add_argument(
        "--server-ip",
        action="extend",
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="IP",
        dest="server_ips",
        help="IP address nodes may use to reach the SuperLink, e.g. 127.0.0.1 (repeatable; "
        "none by default)",
    )
    init.add_argument(
        "--nodes",
        action="extend",
        nargs="+",
        required=True,
        default=argparse.SUPPRESS,
        metavar="ID",
        dest="node_ids",
        help="node IDs ([A-Za-z0-9_.-], not starting with '.'): one key directory each",
    )
    init.add_argument(
        "--days",
        type=int,
        default=DEFAULT_SERVER_DAYS,
        help=f"validity of the server certificate in days (the CA gets {CA_VALIDITY_DAYS})",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="regenerate existing CA, server certificate and auth keys (ledger signing keys "
        "are always kept)",
    )

    show = certs_sub.add_parser(
        "show",
        help="print certificates, fingerprints and expiry of a certs directory",
        description="Show what 'fedlora certs init' wrote to DIR, and check it.",
        epilog=EPILOG_SHOW,
        formatter_class=formatter,
    )
    show.add_argument("dir", type=Path, metavar="DIR", help="the directory given to init --out")


def cmd_certs(args: argparse.Namespace) -> int:
    """Run ``fedlora certs init|show``."""
    if args.certs_command == "init":
        try:
            identity = create_deployment_identity(
                args.out,
                server_names=args.server_names,
                server_ips=getattr(args, "server_ips", []),
                node_ids=args.node_ids,
                days=args.days,
                force=args.force,
            )
        except FileExistsError:
            raise
        except OSError as exc:  # inputs and targets were checked: a full disk, say
            raise ValueError(
                f"{exc}; files written before the error are complete, run again with --force "
                f"to regenerate the rest (ledger signing keys are kept)"
            ) from exc
        _print_init(identity)
        return 0
    try:
        description = describe_identity(args.dir)
    except OSError as exc:
        raise ValueError(f"cannot read {args.dir}: {exc}") from exc
    _print_show(description)
    return 1 if description.problems else 0


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _print_init(identity: DeploymentIdentity) -> None:
    out = identity.out
    width = max(len(str(f.path)) for f in identity.written)
    print(f"wrote {len(identity.written)} files under {out}:")
    for written in identity.written:
        print(f"  {written.path!s:<{width}}  {written.mode:04o}  {written.what}")
    if identity.kept:
        print(
            "kept the existing ledger signing keys (they sign the nodes' privacy ledgers;\n"
            "fedlora certs never replaces them):"
        )
        for path in identity.kept:
            print(f"  {path}")

    print("fingerprints:")
    print(f"  {CA_CERT_NAME:<11} SHA-256 {identity.ca_fingerprint}")
    print(f"  {'':<11} valid until {_date(identity.ca_not_after)}")
    print(f"  {SERVER_CERT_NAME:<11} SHA-256 {identity.server_fingerprint}")
    print(f"  {'':<11} valid until {_date(identity.server_not_after)}")
    sans = [f"DNS:{n}" for n in identity.server_names] + [f"IP:{ip}" for ip in identity.server_ips]
    print(f"  {'':<11} SANs: {', '.join(sans)}")
    for node in identity.nodes:
        ledger_note = "" if node.ledger_key_created else " (existing, kept)"
        print(f"  node {node.node_id}")
        print(f"    auth key    {node.auth_key_fingerprint} (ecdsa-sha2-nistp384)")
        print(f"    ledger key  {node.ledger_key_fingerprint}{ledger_note}")

    name = identity.server_names[0]
    nodes_dir = out / "nodes"
    print(
        _NEXT_STEPS.format(
            name=name,
            ca=CA_CERT_NAME,
            ca_key=CA_KEY_NAME,
            cert=SERVER_CERT_NAME,
            key=SERVER_KEY_NAME,
            nodes_dir=nodes_dir,
            port=SUPERLINK_PORT,
            register="\n".join(
                f"       flwr supernode register {node.auth_public_key_path} <connection>"
                for node in identity.nodes
            ),
        )
    )


def _print_certificate(info: CertificateInfo) -> None:
    kind = "CA certificate" if info.is_ca else "certificate"
    issuer = "(self-signed)" if info.issuer == info.subject else info.issuer
    print(f"{info.path}  [{kind}, {info.key_type}]")
    print(f"  subject:     {info.subject}")
    print(f"  issuer:      {issuer}")
    print(f"  SANs:        {', '.join(info.sans) if info.sans else '(none)'}")
    print(f"  SHA-256:     {info.fingerprint}")
    print(f"  not before:  {_date(info.not_before)}")
    left = f"{info.days_left} days left" if info.days_left >= 0 else "EXPIRED"
    print(f"  not after:   {_date(info.not_after)} ({left})")


def _print_show(description: IdentityDescription) -> None:
    for info in description.certificates:
        _print_certificate(info)
    for node in description.nodes:
        print(f"node {node.node_id}")
        if node.auth_public_key_path is not None:
            curve = f", {node.auth_key_curve}" if node.auth_key_curve else ""
            print(f"  auth key:    {node.auth_public_key_path}")
            print(f"               {node.auth_key_type}{curve}  {node.auth_key_fingerprint}")
        else:
            print("  auth key:    (none)")
        if node.ledger_public_key_path is not None:
            print(f"  ledger key:  {node.ledger_public_key_path}")
            print(f"               Ed25519  {node.ledger_key_fingerprint}")
        else:
            print("  ledger key:  (none)")
    for warning in description.warnings:
        print(f"WARNING: {warning}")
    for problem in description.problems:
        print(f"PROBLEM: {problem}")
    if any(info.days_left <= EXPIRY_WARNING_DAYS for info in description.certificates):
        print(
            f"renew with: fedlora certs init --out {description.directory} ... --force (a new "
            f"CA: give every node the new {CA_CERT_NAME}; ledger signing keys are kept)"
        )
    if not description.warnings and not description.problems:
        print(f"OK: no certificate expires within {EXPIRY_WARNING_DAYS} days, no problems found")
