"""HTTPS (``POLLAMA_TLS_CERT`` / ``POLLAMA_TLS_KEY``): a real ``pollama serve`` with a certificate for
127.0.0.1 signed by a CA made in the test, reached by httpx and by the CLI through ``SSL_CERT_FILE``."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pollama.client import Client, ClientError
from pollama.config import Settings
from pollama.errors import ConfigError
from tests.conftest import ServerProcess


@dataclass(frozen=True)
class Pki:
    """A CA certificate and a server certificate + key for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("pollama test CA"))
        .issuer_name(_name("pollama test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path / "pki"
    folder.mkdir()
    pki = Pki(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server-key.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


@pytest.fixture
def https_server(isolated_env: Path, pki: Pki) -> Iterator[ServerProcess]:
    """A server serving HTTPS with ``pki``'s certificate; ``url`` is its https address."""
    proc = ServerProcess(isolated_env, {"POLLAMA_TLS_CERT": str(pki.cert), "POLLAMA_TLS_KEY": str(pki.key)})
    proc.url = f"https://127.0.0.1:{proc.port}"
    context = ssl.create_default_context(cafile=str(pki.ca))
    with open(proc.log, "ab") as log:
        proc.process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"], env=proc.env, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.process.poll() is None, proc.log.read_text()
            assert time.monotonic() < deadline, proc.log.read_text()
            try:
                if httpx.get(proc.url + "/", verify=context, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield proc
    finally:
        proc.stop()


def test_tls_settings_need_both_files(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POLLAMA_TLS_CERT": str(pki.cert)})
    assert (
        str(info.value)
        == "POLLAMA_TLS_KEY: not set, but POLLAMA_TLS_CERT is (HTTPS needs both a certificate and its key)"
    )
    with pytest.raises(ConfigError, match=r"^POLLAMA_TLS_CERT: not set, but POLLAMA_TLS_KEY is"):
        Settings.from_env({"POLLAMA_TLS_KEY": str(pki.key)})
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POLLAMA_TLS_CERT": str(missing), "POLLAMA_TLS_KEY": str(pki.key)})
    assert str(info.value) == f"POLLAMA_TLS_CERT: cannot read {missing}"
    both = Settings.from_env({"POLLAMA_TLS_CERT": str(pki.cert), "POLLAMA_TLS_KEY": str(pki.key)})
    assert (both.tls, both.tls_cert, both.tls_key) == (True, pki.cert, pki.key)


def test_serve_refuses_half_a_tls_setting_and_a_mismatched_pair(isolated_env: Path, pki: Pki) -> None:
    proc = ServerProcess(isolated_env, {"POLLAMA_TLS_CERT": str(pki.cert)})
    half = proc.cli("serve", timeout=60)
    assert half.returncode == 1
    assert half.stderr.strip().splitlines()[-1] == (
        "Error: POLLAMA_TLS_KEY: not set, but POLLAMA_TLS_CERT is (HTTPS needs both a certificate and its key)"
    )
    wrong = proc.cli("serve", timeout=60, env={"POLLAMA_TLS_KEY": str(pki.cert)})  # a certificate is no key
    assert wrong.returncode == 1
    assert (
        wrong.stderr.strip()
        .splitlines()[-1]
        .startswith(f"Error: POLLAMA_TLS_CERT/POLLAMA_TLS_KEY: cannot use {pki.cert} with {pki.cert}:")
    )


def test_https_with_httpx_and_the_client(
    https_server: ServerProcess, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(base_url=https_server.url, verify=context, timeout=30) as c:
        assert c.get("/").text == "Ollama is running"
        assert c.get("/api/tags").json() == {"models": []}
    # plain HTTP to the HTTPS port gets no answer from the API
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_server.port}/api/tags", timeout=5)
    # pollama.client.Client trusts SSL_CERT_FILE (its httpx client ignores the environment otherwise)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    with Client(https_server.url, timeout=30) as client:
        assert client.list() == []
    monkeypatch.delenv("SSL_CERT_FILE")
    with Client(https_server.url, timeout=30) as client, pytest.raises(ClientError) as info:
        client.list()
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert type(info.value) is ClientError  # not ConnectError: a server is there, none must be started


def test_cli_over_https_with_a_private_ca(https_server: ServerProcess, pki: Pki) -> None:
    host = {"OLLAMA_HOST": https_server.url}
    ok = https_server.cli("list", env={**host, "SSL_CERT_FILE": str(pki.ca)}, timeout=60)
    assert (ok.returncode, ok.stdout.split(), ok.stderr) == (0, ["NAME", "ID", "SIZE", "MODIFIED"], "")
    untrusted = https_server.cli("list", env=host, timeout=60)
    assert untrusted.returncode == 1
    assert untrusted.stderr.startswith(f"Error: could not connect to pollama server at {https_server.url}:")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert "Started pollama server" not in untrusted.stderr
