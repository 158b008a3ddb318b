"""A test CA made in the test (``cryptography``), per-device certificates, and a Mosquitto that
requires them, takes the certificate's CN as the user name and applies the cloud ACL of
docs/security.md."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import Broker

INGEST = "edge-cloud-ingest"
ACL = f"""\
# devices (user name = the CN of their certificate = their device id)
pattern write edge/%u/data
pattern write edge/%u/status
pattern write edge/%u/config/reported
pattern write edge/%u/reply/#
pattern read edge/%u/ack
pattern read edge/%u/config/desired
pattern read edge/%u/cmd/#

# the ingest and console
user {INGEST}
topic read edge/+/data
topic read edge/+/status
topic read edge/+/config/reported
topic read edge/+/reply/#
topic write edge/+/ack
topic write edge/+/config/desired
topic write edge/+/cmd/#
"""

Key = ec.EllipticCurvePrivateKey


class TestCA:
    """A CA that issues server and client certificates into ``folder``."""

    __test__ = False  # a helper whose name starts with Test, not a test class

    def __init__(self, folder: Path, name: str = "Edge Test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name.replace(' ', '-').lower()}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, server: bool = False, expired: bool = False) -> tuple[Path, Path]:
        """``(cert, key)`` files for ``name`` (the CN; for a server, 127.0.0.1 as its address)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start, end = ((now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired
                      else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=90)))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if server:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.folder / f"{name}.crt"
        key_path = self.folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


def tls_broker(workdir: Path, ca: TestCA) -> Broker:
    """A Mosquitto with one mutual-TLS listener and the ACL above (not started)."""
    cert, key = ca.issue("broker", server=True)
    acl = workdir / "acl"
    acl.write_text(ACL)
    return Broker(workdir, f"""
        cafile {ca.path}
        certfile {cert}
        keyfile {key}
        require_certificate true
        use_identity_as_username true
        tls_version tlsv1.2
        acl_file {acl}
        user root
        """)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
