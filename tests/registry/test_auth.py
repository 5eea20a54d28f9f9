"""Keys, signatures and token flows: Ollama's ed25519 key and signed token requests (spec §6.5), the
Docker token protocol with credentials, and where credentials come from."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from pollama.errors import RegistryError, Unauthorized
from pollama.names import parse_name
from pollama.registry.auth import Challenge, is_ollama_host, lookup_credentials, signed_token_url
from pollama.registry.client import RegistryClient
from pollama.registry.keys import KeyPair, decode_private_key, encode_private_key, ensure_keypair, verify_signature

RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
    "39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_ed25519_matches_rfc8032() -> None:
    key = KeyPair.from_seed(RFC8032_SEED)
    assert key.public == RFC8032_PUBLIC
    assert key.raw_signature(b"") == RFC8032_SIG
    assert verify_signature(RFC8032_PUBLIC, b"", RFC8032_SIG)
    assert not verify_signature(RFC8032_PUBLIC, b"x", RFC8032_SIG)
    assert not verify_signature(RFC8032_PUBLIC, b"", RFC8032_SIG[:-1] + b"\0")


def test_key_files_are_openssh(tmp_path: Path) -> None:
    key, created = ensure_keypair(tmp_path)
    assert created and ensure_keypair(tmp_path) == (key, False)
    assert (tmp_path / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "id_ed25519.pub").read_text() == key.authorized_key
    assert decode_private_key(encode_private_key(key)) == key
    assert shutil.which("ssh-keygen"), "ssh-keygen is missing (scripts/test installs openssh-client)"
    # OpenSSH reads our key, and we read OpenSSH's.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(tmp_path / "id_ed25519")], capture_output=True, text=True, check=True
    ).stdout
    assert derived.split()[:2] == key.authorized_key.split()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(tmp_path / "theirs")], check=True
    )
    theirs = decode_private_key((tmp_path / "theirs").read_bytes())
    assert theirs.authorized_key.split() == (tmp_path / "theirs.pub").read_text().split()


def test_signature_string(tmp_path: Path) -> None:
    key, _ = ensure_keypair(tmp_path)
    pub, sig = key.sign(b"hello").split(":")
    assert pub == key.authorized_key.split()[1]
    assert verify_signature(key.public, b"hello", base64.b64decode(sig))


def test_challenge_and_signed_url() -> None:
    challenge = Challenge.parse(
        'Bearer realm="https://registry.ollama.ai/v2/token",service="registry.ollama.ai",'
        'scope="repository:library/m:pull repository:library/n:pull"'
    )
    assert challenge == Challenge(
        "bearer",
        "https://registry.ollama.ai/v2/token",
        "registry.ollama.ai",
        "repository:library/m:pull repository:library/n:pull",
    )
    url = signed_token_url("https://registry.ollama.ai/v2/token?b=1", challenge, now=1700000000, nonce="abc")
    assert url == (
        "https://registry.ollama.ai/v2/token?b=1&nonce=abc&scope=repository%3Alibrary%2Fm%3Apull"
        "&scope=repository%3Alibrary%2Fn%3Apull&service=registry.ollama.ai&ts=1700000000"
    )
    assert Challenge.parse('Basic realm="x"').scheme == "basic"
    assert is_ollama_host("registry.ollama.ai") and is_ollama_host("ollama.com")
    assert not is_ollama_host("ghcr.io") and not is_ollama_host("127.0.0.1:5000")


def test_credentials_lookup(tmp_path: Path) -> None:
    docker = tmp_path / ".docker"
    docker.mkdir()
    auth = base64.b64encode(b"bob:pw:with:colons").decode()
    (docker / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://reg.example.com/v2/": {"auth": auth},
                    "plain.example.com:5000": {"username": "u", "password": "p"},
                }
            }
        )
    )
    env = {"HOME": str(tmp_path)}
    found = lookup_credentials("reg.example.com", environ=env)
    assert found is not None and (found.username, found.password) == ("bob", "pw:with:colons")
    found = lookup_credentials("plain.example.com:5000", environ=env)
    assert found is not None and (found.username, found.password) == ("u", "p")
    assert lookup_credentials("other.example.com", environ=env) is None
    env_creds = {**env, "POLLAMA_REGISTRY_USERNAME": "e", "POLLAMA_REGISTRY_PASSWORD": "f"}
    found = lookup_credentials("other.example.com", environ=env_creds)
    assert found is not None and found.basic() == "Basic " + base64.b64encode(b"e:f").decode()
    assert lookup_credentials("other.example.com", environ={**env_creds, "POLLAMA_REGISTRY_HOST": "x"}) is None
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "config.json").write_text(json.dumps({"auths": {"z.example.com": {"auth": auth}}}))
    assert lookup_credentials("z.example.com", environ={**env, "DOCKER_CONFIG": str(moved)}) is not None


class _TokenRegistry:
    """A registry that wants a bearer token, and its token endpoint on the same host."""

    def __init__(self, *, realm_host: str = "") -> None:
        self.token_requests: list[dict[str, Any]] = []
        self.realm_host = realm_host
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: Any, **headers: str) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        auth = handler.headers.get("Authorization", "")
        if path.startswith("/token"):
            url = f"http://{handler.headers['Host']}{path}"
            self.token_requests.append({"url": url, "authorization": auth})
            if auth.startswith("Basic "):
                ok = base64.b64decode(auth[6:]) == b"carol:pw"
                token = {"access_token": "docker-token"}
            else:
                pub, _, sig = auth.partition(":")
                wire = base64.b64decode(pub)
                payload = f"GET,{url},".encode() + base64.b64encode(hashlib.sha256(b"").hexdigest().encode())
                ok = verify_signature(wire[-32:], payload, base64.b64decode(sig))
                token = {"token": "signed-token"}
            self.reply(handler, 200 if ok else 401, token if ok else {"error": "bad signature"})
            return
        if auth in ("Bearer signed-token", "Bearer docker-token"):
            self.reply(
                handler,
                200,
                {"schemaVersion": 2, "layers": []},
                Content_Type="application/vnd.docker.distribution.manifest.v2+json",
            )
            return
        realm = f"http://{self.realm_host or self.host}/token"
        self.reply(
            handler,
            401,
            {"errors": [{"code": "UNAUTHORIZED"}]},
            WWW_Authenticate=f'Bearer realm="{realm}",service="test",scope="repository:library/m:pull"',
        )


@pytest.fixture
def token_registry() -> Iterator[_TokenRegistry]:
    reg = _TokenRegistry()
    yield reg
    reg.close()


def test_ollama_signed_token_flow(
    token_registry: _TokenRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pollama.registry.auth.is_ollama_host", lambda host: True)
    name = parse_name(f"{token_registry.host}/library/m")
    with RegistryClient(name, insecure=True, key_home=tmp_path / ".ollama", home=tmp_path) as client:
        raw, _ = client.get_manifest("latest")
    assert json.loads(raw)["schemaVersion"] == 2
    [request] = token_registry.token_requests
    query = parse_qsl(urlsplit(request["url"]).query)
    assert [k for k, _ in query] == ["nonce", "scope", "service", "ts"]
    assert dict(query)["scope"] == "repository:library/m:pull" and dict(query)["service"] == "test"
    key_line = (tmp_path / ".ollama" / "id_ed25519.pub").read_text().split()[1]
    assert request["authorization"].startswith(key_line + ":")


def test_signed_token_realm_must_be_the_registry_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pollama.registry.auth.is_ollama_host", lambda host: True)
    reg = _TokenRegistry(realm_host="127.0.0.2:1")
    try:
        name = parse_name(f"{reg.host}/library/m")
        with (
            RegistryClient(name, insecure=True, key_home=tmp_path, home=tmp_path) as client,
            pytest.raises(RegistryError, match=f'realm host "127.0.0.2:1" does not match original host "{reg.host}"'),
        ):
            client.get_manifest("latest")
    finally:
        reg.close()


def test_docker_token_flow_with_credentials(
    token_registry: _TokenRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = parse_name(f"{token_registry.host}/library/m")
    monkeypatch.setenv("POLLAMA_REGISTRY_USERNAME", "carol")
    monkeypatch.setenv("POLLAMA_REGISTRY_PASSWORD", "pw")
    with RegistryClient(name, insecure=True, key_home=tmp_path, home=tmp_path) as client:
        client.get_manifest("latest")
    assert token_registry.token_requests[-1]["authorization"] == "Basic " + base64.b64encode(b"carol:pw").decode()
    monkeypatch.setenv("POLLAMA_REGISTRY_PASSWORD", "wrong")
    with (
        RegistryClient(name, insecure=True, key_home=tmp_path, home=tmp_path) as client,
        pytest.raises(Unauthorized, match="unauthorized: access denied"),
    ):
        client.get_manifest("latest")


def test_client_signs_requests_with_ollama_auth(tmp_path: Path) -> None:
    # OLLAMA_AUTH: the CLI's client adds ?ts= and signs "<METHOD>,<path>?ts=<ts>" with the machine key.
    from pollama.cli.server import client_for
    from pollama.client import ClientError
    from pollama.config import Settings

    seen: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: bytes) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(b'{"version": "0.0.1"}')

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(b'{"status": "success"}\n')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"HOME": str(tmp_path), "OLLAMA_HOST": f"127.0.0.1:{server.server_address[1]}"}
    try:
        with client_for(Settings.from_env({**env, "OLLAMA_AUTH": "1"})) as client:
            with pytest.raises(ClientError, match=r"^open .*id_ed25519: no such file or directory$"):
                client.version()
            key, _ = ensure_keypair(tmp_path / ".ollama")
            assert client.version() == "0.0.1"
            assert [item["status"] for item in client.pull("m")] == ["success"]
        with client_for(Settings.from_env(env)) as client:
            client.version()
    finally:
        server.shutdown()
        server.server_close()
    (get_method, get_path, get_auth), (post_method, post_path, post_auth), unsigned = seen
    for method, path, auth, api in (
        (get_method, get_path, get_auth, "/api/version"),
        (post_method, post_path, post_auth, "/api/pull"),
    ):
        route, _, query = path.partition("?")
        assert route == api and parse_qsl(query)[0][0] == "ts"
        pub, _, sig = auth.partition(":")
        assert pub == key.public_base64
        assert verify_signature(key.public, f"{method},{route}?{query}".encode(), base64.b64decode(sig))
    assert unsigned == ("GET", "/api/version", "")
