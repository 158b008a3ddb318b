"""Ed25519 signatures on desired-config documents (both ends).

The device holds only the public key (``[remote] public_key_file``); whoever signs holds the
private key, ideally offline and never on the console's server, so that a compromised cloud
account cannot push a config that a device accepts. Keys are PEM files as ``openssl genpkey
-algorithm ed25519`` writes them (``openssl pkey -pubout`` for the public half), or as
``edge-cloud config keygen`` does.

Uses the ``cryptography`` package (the ``signing`` extra): it ships wheels for x86_64, aarch64
and armv7l, and the agent imports it only when a public key is configured.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.extras import MissingExtra
from cloud_sync.protocol import DesiredConfig

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

class SignatureError(ValueError):
    """A document is unsigned, or its signature does not verify with the key; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _serialization() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise MissingExtra("signing", "cryptography", "signed configs (Ed25519 keys)") from None
    return serialization


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; ``ValueError`` saying why not."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ValueError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def generate() -> tuple[bytes, bytes]:
    """A new key pair as PEM: ``(private, public)``."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def sign(doc: DesiredConfig, key: Ed25519PrivateKey) -> DesiredConfig:
    """``doc`` with its signature."""
    signature = base64.b64encode(key.sign(doc.signed_bytes())).decode()
    return dataclasses.replace(doc, signature=signature)


def verify(doc: DesiredConfig, key: Ed25519PublicKey) -> None:
    """Return if ``doc`` is signed by ``key``; ``SignatureError`` otherwise."""
    from cryptography.exceptions import InvalidSignature

    if doc.signature is None:
        raise SignatureError("unsigned: this device accepts only configs signed with its key")
    try:
        raw = base64.b64decode(doc.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature: not base64") from None
    try:
        key.verify(raw, doc.signed_bytes())
    except InvalidSignature:
        raise SignatureError(
            "bad signature: not made with this device's key, or the document was changed"
        ) from None
