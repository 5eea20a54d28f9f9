"""Ollama's machine key: ``~/.ollama/id_ed25519`` (+ ``.pub``) and the signatures made with it.

The private key is an unencrypted OpenSSH key (``-----BEGIN OPENSSH PRIVATE KEY-----``, mode 0600),
the public key an ``authorized_keys`` line (``ssh-ed25519 AAAA...``, 0644), exactly as ``ollama serve``
writes them, so either program can use a key the other made. A signature is sent as
``<base64 SSH public key>:<base64 raw signature>`` (spec §6.5).
"""

from __future__ import annotations

import base64
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from pollama.errors import RegistryError
from pollama.registry import ed25519
from pollama.store.files import atomic_write_bytes

PRIVATE_KEY_FILE = "id_ed25519"
_KEY_TYPE = b"ssh-ed25519"
_MAGIC = b"openssh-key-v1\x00"
_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_END = "-----END OPENSSH PRIVATE KEY-----"


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key: the 32-byte seed and the 32-byte public key."""

    seed: bytes
    public: bytes

    @property
    def public_wire(self) -> bytes:
        """The public key in SSH wire format (``string "ssh-ed25519" || string key``)."""
        return _string(_KEY_TYPE) + _string(self.public)

    @property
    def public_base64(self) -> str:
        """The second field of the ``.pub`` line."""
        return base64.b64encode(self.public_wire).decode("ascii")

    @property
    def authorized_key(self) -> str:
        """The ``.pub`` file's line, as Go's ``ssh.MarshalAuthorizedKey`` writes it (with ``\\n``)."""
        return f"ssh-ed25519 {self.public_base64}\n"

    def sign(self, message: bytes) -> str:
        """Ollama's signature string for ``message``: ``<public key>:<base64 signature>``."""
        signature = ed25519.sign(self.seed, message)
        return f"{self.public_base64}:{base64.b64encode(signature).decode('ascii')}"

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key."""
        seed = secrets.token_bytes(32)
        return cls(seed, ed25519.public_key(seed))


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def encode_private_key(key: KeyPair, comment: str = "") -> bytes:
    """``key`` as an unencrypted OpenSSH private key file (PEM, 64-column lines like Go's encoder)."""
    check = secrets.token_bytes(4)
    private = (check + check + _string(_KEY_TYPE) + _string(key.public) + _string(key.seed + key.public)
               + _string(comment.encode("utf-8")))
    private += bytes(range(1, 1 + (-len(private)) % 8))
    body = (_MAGIC + _string(b"none") + _string(b"none") + _string(b"") + struct.pack(">I", 1)
            + _string(key.public_wire) + _string(private))
    encoded = base64.b64encode(body).decode("ascii")
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    return ("\n".join([_BEGIN, *lines, _END]) + "\n").encode("ascii")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ValueError("truncated key")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        size = self.uint32()
        if self.pos + size > len(self.data):
            raise ValueError("truncated key")
        value = self.data[self.pos:self.pos + size]
        self.pos += size
        return value


def decode_private_key(text: bytes) -> KeyPair:
    """Read an unencrypted OpenSSH ed25519 private key file; ``ValueError`` for anything else."""
    lines = text.decode("ascii", errors="replace").strip().splitlines()
    if not lines or lines[0].strip() != _BEGIN or lines[-1].strip() != _END:
        raise ValueError("not an OpenSSH private key")
    body = base64.b64decode("".join(line.strip() for line in lines[1:-1]))
    if not body.startswith(_MAGIC):
        raise ValueError("not an OpenSSH private key")
    reader = _Reader(body[len(_MAGIC):])
    cipher, kdf, _ = reader.string(), reader.string(), reader.string()
    if cipher != b"none" or kdf != b"none":
        raise ValueError("the private key is encrypted with a passphrase")
    if reader.uint32() != 1:
        raise ValueError("expected exactly one key")
    reader.string()  # public key, repeated in the private section
    private = _Reader(reader.string())
    if private.uint32() != private.uint32():
        raise ValueError("corrupt private key (check bytes differ)")
    if private.string() != _KEY_TYPE:
        raise ValueError("not an ed25519 key")
    public = private.string()
    secret = private.string()
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise ValueError("corrupt ed25519 key")
    key = KeyPair(secret[:32], public)
    if ed25519.public_key(key.seed) != public:
        raise ValueError("corrupt ed25519 key (public key does not match)")
    return key


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
