"""Ollama's machine key: ``~/.ollama/id_ed25519`` (+ ``.pub``) and the signatures made with it.

The private key is an unencrypted OpenSSH key (``-----BEGIN OPENSSH PRIVATE KEY-----``, mode 0600),
the public key an ``authorized_keys`` line (``ssh-ed25519 AAAA...``, 0644), exactly as ``ollama serve``
writes them, so either program can use a key the other made. A signature is sent as
``<base64 SSH public key>:<base64 raw signature>`` (spec §6.5). The Ed25519 arithmetic and the
OpenSSH file format are ``cryptography``'s.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pollama.errors import RegistryError
from pollama.store.files import atomic_write_bytes

PRIVATE_KEY_FILE = "id_ed25519"


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key: the 32-byte seed and the 32-byte public key."""

    seed: bytes
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The key whose 32-byte private seed is ``seed`` (``ValueError`` for another length)."""
        if len(seed) != 32:
            raise ValueError("an ed25519 private key seed is 32 bytes")
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
        return cls(seed, public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key."""
        private = Ed25519PrivateKey.generate()
        return cls.from_seed(
            private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        )

    @property
    def public_base64(self) -> str:
        """The second field of the ``.pub`` line: the SSH wire form of the public key, base64."""
        return self.authorized_key.split()[1]

    @property
    def authorized_key(self) -> str:
        """The ``.pub`` file's line, as Go's ``ssh.MarshalAuthorizedKey`` writes it (with ``\\n``)."""
        line = Ed25519PublicKey.from_public_bytes(self.public).public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return line.decode("ascii") + "\n"

    def raw_signature(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def sign(self, message: bytes) -> str:
        """Ollama's signature string for ``message``: ``<public key>:<base64 signature>``."""
        signature = base64.b64encode(self.raw_signature(message)).decode("ascii")
        return f"{self.public_base64}:{signature}"


def verify_signature(public: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the Ed25519 signature of ``message`` by the 32-byte key ``public``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_private_key(key: KeyPair) -> bytes:
    """``key`` as an unencrypted OpenSSH private key file."""
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def decode_private_key(text: bytes) -> KeyPair:
    """Read an unencrypted OpenSSH ed25519 private key file; ``ValueError`` for anything else."""
    if not text.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise ValueError("not an OpenSSH private key")
    try:
        private = serialization.load_ssh_private_key(text, password=None)
    except TypeError:
        raise ValueError("the private key is encrypted with a passphrase") from None
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported key: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"corrupt private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("not an ed25519 key")
    return KeyPair.from_seed(
        private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    )


def load_keypair(home: Path) -> KeyPair:
    """The key in ``home`` (``~/.ollama``); ``RegistryError`` if it is missing or unreadable."""
    path = home / PRIVATE_KEY_FILE
    try:
        return decode_private_key(path.read_bytes())
    except FileNotFoundError:
        raise RegistryError(f"open {path}: no such file or directory") from None
    except ValueError as exc:
        raise RegistryError(f"{path}: {exc}") from None


def ensure_keypair(home: Path) -> tuple[KeyPair, bool]:
    """Load the key in ``home``, creating it (and ``id_ed25519.pub``) if missing: ``(key, created)``."""
    path = home / PRIVATE_KEY_FILE
    if path.exists():
        return load_keypair(home), False
    key = KeyPair.generate()
    home.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_private_key(key), mode=0o600)
    atomic_write_bytes(home / f"{PRIVATE_KEY_FILE}.pub", key.authorized_key.encode("ascii"), mode=0o644)
    os.chmod(path, 0o600)
    return key, True
