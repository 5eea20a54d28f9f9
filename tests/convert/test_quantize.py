"""``create --quantize`` through a real server, the real CLI and llama.cpp's quantizer: Ollama's
statuses and errors, the tensor types llama.cpp's mixes give, answers kept, and a quantization
that stops with its client or its server leaves neither a process nor a file behind."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest

from pollama.convert.quantize import (
    Quantizer,
    Quantizers,
    _spawn,
    file_type_id,
    parse_quantization_type,
    supported_types,
)
from pollama.errors import UnsupportedQuantization
from pollama.gguf import read_gguf
from pollama.names import parse_name
from pollama.store.create import CreateRequest, _QuantizeStaging
from pollama.store.store import ModelStore
from tests.conftest import _POLLAMA_SERVER_VARIABLES, CHATML_TEMPLATE, ServerProcess, file_digest, upload_blob

ZERO_DIGEST = "0000000000000000000"


def _stream(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/api/create", json=body) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line]


def _manifest_layers(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    path = server.models / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    return list(json.loads(path.read_text())["layers"])


def _model_blob(server: ServerProcess, name: str) -> Path:
    (layer,) = [item for item in _manifest_layers(server, name) if item["mediaType"].endswith(".model")]
    return server.models / "blobs" / layer["digest"].replace(":", "-")


def _tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _workers() -> Iterator[tuple[int, int, list[str]]]:
    """Live quantizer subprocesses (``pollama/convert/_quantize_worker.py``, imported by ``python
    -c``), busy or spare: each one's pid, its parent's pid and the files it has open."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if b"import _quantize_worker" not in cmdline or stat[0] == "Z":
                continue
            opened = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except (OSError, IndexError):
            continue
        yield int(entry.name), int(stat[1]), opened


def _quantizers(models: Path) -> list[int]:
    """The quantizer subprocesses working in ``models``: with a file there open (its source or its
    output). A spare one, started ahead and idle, has none."""
    return [pid for pid, _, opened in _workers() if any(path.startswith(f"{models}/") for path in opened)]


def _temporaries(models: Path) -> list[str]:
    return sorted(p.name for p in (models / "blobs").iterdir() if p.name.startswith(".tmp-"))


def _wait_until_clean(models: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _quantizers(models) or _temporaries(models):
        assert time.monotonic() < deadline, (_quantizers(models), _temporaries(models))
        time.sleep(0.05)


def _q4_k_m_type(name: str, n_layer: int) -> str:
    """llama.cpp's Q4_K_M mix for SmolLM2-135M (576 columns, 30 blocks), stated independently:
    1-D tensors stay F32; ``attn_v`` and ``ffn_down`` get Q6_K in the first and last eighth of the
    blocks and every third block between (``use_more_bits``), Q4_K elsewhere; the output (here the
    tied token embedding) gets Q6_K; everything else Q4_K. A K-quant needs rows divisible by 256:
    576-column tensors fall back (Q4_K → Q5_0, Q6_K → Q8_0), 1536-column ``ffn_down`` does not."""
    if name.endswith("norm.weight"):
        return "F32"
    if name == "token_embd.weight":
        return "Q8_0"
    block, kind = int(name.split(".")[1]), name.split(".")[2]
    more_bits = block < n_layer // 8 or block >= 7 * n_layer // 8 or (block - n_layer // 8) % 3 == 2
    if kind == "ffn_down":
        return "Q6_K" if more_bits else "Q4_K"
    if kind == "attn_v":
        return "Q8_0" if more_bits else "Q5_0"
    return "Q5_0"


def _answer(client: httpx.Client, model: str, question: str) -> str:
    r = client.post(
        "/api/chat",
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "stream": False,
            "options": {"temperature": 0, "num_predict": 12, "seed": 1},
        },
    )
    assert r.status_code == 200, r.text
    return str(r.json()["message"]["content"])


@pytest.fixture(scope="module")
def quant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, with its own models folder."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith("OLLAMA_") or key in _POLLAMA_SERVER_VARIABLES:
            del os.environ[key]
    os.environ.update({"HOME": str(home), "OLLAMA_MODELS": str(home / ".ollama" / "models")})
    try:
        proc = ServerProcess(home, {"OLLAMA_CONTEXT_LENGTH": "1024"}).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def f16_digest(quant_server: ServerProcess, smollm2_f16_gguf: Path) -> str:
    with quant_server.client() as client:
        return upload_blob(client, smollm2_f16_gguf)


def test_every_llama_cpp_file_type_is_accepted_or_refused_for_its_imatrix() -> None:
    import llama_cpp

    names = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            names[attr.removeprefix("LLAMA_FTYPE_MOSTLY_")] = getattr(llama_cpp, attr)
    del names["NVFP4"]  # in llama.h, but not offered by llama-quantize's table
    refused = []
    for name, ftype in names.items():
        try:
            assert parse_quantization_type(name.lower()) == name
        except UnsupportedQuantization as exc:
            assert "needs an importance matrix" in str(exc)
            refused.append(name)
            continue
        assert file_type_id(name) == ftype
    assert sorted(refused) == ["IQ1_M", "IQ1_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ3_XXS", "Q2_K_S"]
    assert sorted(supported_types()) == sorted(set(names) - set(refused))
    assert parse_quantization_type("q4_k") == "Q4_K_M"
    assert parse_quantization_type("Q5_K") == "Q5_K_M"


def test_quantize_q4_k_m_like_ollama(quant_server: ServerProcess, smollm2_f16_gguf: Path, f16_digest: str) -> None:
    f16_size = smollm2_f16_gguf.stat().st_size
    with quant_server.client() as client:
        lines = _stream(
            client,
            {
                "model": "smol-q4km",
                "files": {smollm2_f16_gguf.name: f16_digest},
                "quantize": "q4_K_M",
                "template": CHATML_TEMPLATE,
            },
        )
        blob = _model_blob(quant_server, "smol-q4km")
        template_digest = "sha256:" + hashlib.sha256(CHATML_TEMPLATE.encode()).hexdigest()
        progress = [line for line in lines if line["status"].startswith("quantizing")]
        assert lines[0] == {"status": "parsing GGUF"}
        assert lines[1 : 1 + len(progress)] == progress
        assert lines[1 + len(progress) :] == [
            {"status": "verifying conversion"},
            {"status": f"creating new layer {file_digest(blob)}"},
            {"status": f"creating new layer {template_digest}"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        assert {(p["status"], p["digest"], p["total"]) for p in progress} == {
            ("quantizing F16 model to Q4_K_M", ZERO_DIGEST, f16_size)
        }
        done = [p.get("completed", 0) for p in progress]
        # as tensors start, at most every 50 ms: a quantization of more than a second has many steps
        assert done == sorted(done) and done[-1] == f16_size and len(set(done)) >= 10

        assert blob.stat().st_size < f16_size / 2
        reader = gguf.GGUFReader(blob)
        assert int(reader.fields["general.file_type"].contents()) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        types = _tensor_types(blob)
        assert len(types) == 272
        assert types == {name: _q4_k_m_type(name, 30) for name in types}

        show = client.post("/api/show", json={"model": "smol-q4km"}).json()
        assert show["details"]["quantization_level"] == "Q4_K_M"
        tags = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
        assert tags["smol-q4km:latest"]["details"]["quantization_level"] == "Q4_K_M"
        assert tags["smol-q4km:latest"]["size"] < f16_size / 2

        r = client.post(
            "/api/create",
            json={"model": "smol-f16", "files": {smollm2_f16_gguf.name: f16_digest}, "template": CHATML_TEMPLATE},
        )
        assert r.status_code == 200
        for question, word in (("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome")):
            assert word in _answer(client, "smol-f16", question)
            assert word in _answer(client, "smol-q4km", question)


def test_cli_quantizes_to_q4_0_with_a_progress_bar(
    quant_server: ServerProcess, smollm2_f16_gguf: Path, f16_digest: str, tmp_path: Path
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_f16_gguf}\n")
    result = quant_server.cli("create", "smol-q40", "-f", str(modelfile), "--quantize", "q4_0")
    assert result.returncode == 0, result.stderr
    blob = _model_blob(quant_server, "smol-q40")
    size = smollm2_f16_gguf.stat().st_size
    lines = result.stderr.splitlines()
    assert lines[0] == "parsing GGUF"
    assert re.fullmatch(rf"quantizing F16 model to Q4_0: 100% ▕█+▏ {size // 10**6} MB", lines[1]), lines[1]
    assert lines[2:] == [
        "verifying conversion",
        f"creating new layer {file_digest(blob)}",
        "writing manifest",
        "success",
    ]
    types = _tensor_types(blob)
    assert {n: t for n, t in types.items() if t not in ("F32", "Q4_0")} == {"token_embd.weight": "Q8_0"}
    with quant_server.client() as client:
        show = client.post("/api/show", json={"model": "smol-q40"}).json()
    assert show["details"]["quantization_level"] == "Q4_0"


def test_same_type_is_a_no_op_and_an_installed_model_quantizes_to_q8_0(
    quant_server: ServerProcess, smollm2_f16_gguf: Path, f16_digest: str
) -> None:
    files = {smollm2_f16_gguf.name: f16_digest}
    with quant_server.client() as client:
        lines = _stream(client, {"model": "smol-same", "files": files, "quantize": "f16"})
        assert [line["status"] for line in lines] == [
            "parsing GGUF",
            f"using existing layer {f16_digest}",
            "writing manifest",
            "success",
        ]
        assert _model_blob(quant_server, "smol-same").name == f16_digest.replace(":", "-")
        show = client.post("/api/show", json={"model": "smol-same"}).json()
        assert show["details"]["quantization_level"] == "F16"

        # FROM an installed F16 model, as `FROM smol-same` in a Modelfile
        lines = _stream(client, {"model": "smol-q8", "from": "smol-same", "quantize": "Q8_0"})
        blob = _model_blob(quant_server, "smol-q8")
        assert [line["status"] for line in lines if not line["status"].startswith("quantizing")] == [
            "verifying conversion",
            f"creating new layer {file_digest(blob)}",
            "writing manifest",
            "success",
        ]
        assert {line["status"] for line in lines if "digest" in line} == {"quantizing F16 model to Q8_0"}
        types = _tensor_types(blob)
        assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {"Q8_0"}
        show = client.post("/api/show", json={"model": "smol-q8"}).json()
        assert show["details"]["quantization_level"] == "Q8_0"


def test_errors_are_ollamas(quant_server: ServerProcess, smollm2_gguf: Path, f16_digest: str) -> None:
    with quant_server.client() as client:
        r = client.post("/api/create", json={"model": "x", "files": {"m.gguf": f16_digest}, "quantize": "q9_z"})
        assert r.status_code == 400
        listed = ", ".join(supported_types())
        assert r.json() == {"error": f"unsupported quantization type Q9_Z - supported types are {listed}"}
        for name in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ2_0", "Q8_0"):
            assert name in supported_types()

        r = client.post("/api/create", json={"model": "x", "files": {"m.gguf": f16_digest}, "quantize": "iq2_xxs"})
        assert r.status_code == 400
        assert r.json()["error"].startswith(
            "quantization type IQ2_XXS needs an importance matrix (imatrix), which is not supported"
        )

        # llama.cpp itself refuses: Q1_0 needs rows of 128 and has no fallback for SmolLM2's 576
        body = {"model": "x", "files": {"m.gguf": f16_digest}, "quantize": "Q1_0", "stream": False}
        r = client.post("/api/create", json=body)
        assert r.status_code == 400
        assert r.json() == {"error": "quantizing to Q1_0 failed: no tensor type fallback is defined for type q1_0"}
        assert _temporaries(quant_server.models) == [] and _quantizers(quant_server.models) == []

        q41 = upload_blob(client, smollm2_gguf)
        body = {"model": "x", "files": {smollm2_gguf.name: q41}, "quantize": "q4_K_M", "stream": False}
        r = client.post("/api/create", json=body)
        assert r.status_code == 400
        assert r.json() == {"error": "quantization is only supported for F16, BF16 and F32 models"}
        # the quantizer started (and handed this file) before the header was read is gone with the refusal
        assert _temporaries(quant_server.models) == [] and _quantizers(quant_server.models) == []
        lines = _stream(client, {**body, "stream": True})
        assert lines == [
            {"status": "parsing GGUF"},
            {"error": "quantization is only supported for F16, BF16 and F32 models"},
        ]
        assert client.post("/api/show", json={"model": "x"}).status_code == 404
        assert _temporaries(quant_server.models) == [] and _quantizers(quant_server.models) == []


def test_a_client_that_goes_stops_the_quantizer(
    quant_server: ServerProcess, smollm2_f16_gguf: Path, f16_digest: str
) -> None:
    body = {"model": "smol-gone", "files": {smollm2_f16_gguf.name: f16_digest}, "quantize": "Q5_K_M"}
    with quant_server.client() as client, client.stream("POST", "/api/create", json=body) as r:
        for line in r.iter_lines():
            if line.startswith('{"status":"quantizing'):
                assert _quantizers(quant_server.models)
                break
    _wait_until_clean(quant_server.models)
    with quant_server.client() as client:
        assert client.post("/api/show", json={"model": "smol-gone"}).status_code == 404


def test_a_crashing_quantizer_fails_the_request_not_the_server(
    quant_server: ServerProcess, smollm2_f16_gguf: Path, f16_digest: str
) -> None:
    body = {"model": "smol-crash", "files": {smollm2_f16_gguf.name: f16_digest}, "quantize": "Q6_K"}
    with quant_server.client() as client:
        with client.stream("POST", "/api/create", json=body) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith('{"status":"quantizing'):
                    (pid,) = _quantizers(quant_server.models)
                    os.kill(pid, signal.SIGSEGV)
                    break
            last = json.loads(list(lines)[-1])
        assert last == {"error": "quantizing to Q6_K failed: the quantizer was killed by SIGSEGV"}
        _wait_until_clean(quant_server.models)
        assert client.get("/api/version").status_code == 200
        assert client.post("/api/show", json={"model": "smol-crash"}).status_code == 404


def test_a_killed_server_leaves_no_quantizer(server: ServerProcess, smollm2_f16_gguf: Path) -> None:
    assert server.process is not None
    with server.client() as client:
        digest = upload_blob(client, smollm2_f16_gguf)
        body = {"model": "smol", "files": {smollm2_f16_gguf.name: digest}, "quantize": "Q4_0"}
        with client.stream("POST", "/api/create", json=body) as r:
            for line in r.iter_lines():
                if line.startswith('{"status":"quantizing'):
                    assert _quantizers(server.models)
                    os.kill(server.process.pid, signal.SIGKILL)  # the server only: its quantizer must notice
                    break
    server.process.wait()
    _wait_until_clean(server.models)


def _worker_children(parent: int) -> list[int]:
    """The quantizer subprocesses ``parent`` started, busy or spare."""
    return [pid for pid, ppid, _ in _workers() if ppid == parent]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_a_quantizer_is_kept_ready_after_one_and_used_by_the_next(tmp_path: Path, smollm2_f16_gguf: Path) -> None:
    """After a quantization the next subprocess starts ahead, idle (no file open); the next
    quantization runs in it, right; unused, it is stopped after ``keep`` seconds."""
    quantizers = Quantizers(keep=3.0)
    source = read_gguf(smollm2_f16_gguf)
    try:
        assert quantizers.spare_pid() is None
        with quantizers.start(tmp_path / "a.gguf", "Q4_0") as first:
            first.begin(smollm2_f16_gguf)
            list(first.quantize(source))
            first.digest()
        spare = quantizers.spare_pid()
        assert spare is not None and spare != first._process.pid and not _gone(spare)
        assert _quantizers(tmp_path) == []  # idle: nothing open in the folder
        with quantizers.start(tmp_path / "b.gguf", "Q8_0") as second:
            assert second._process.pid == spare and quantizers.spare_pid() is None
            second.begin(smollm2_f16_gguf)
            list(second.quantize(source))
            digest = second.digest()
        assert digest == file_digest(tmp_path / "b.gguf")
        assert read_gguf(tmp_path / "b.gguf").metadata["general.file_type"] == file_type_id("Q8_0")
        last = quantizers.spare_pid()
        assert last is not None and last != spare
        deadline = time.monotonic() + 20
        while not _gone(last):  # expired, killed and reaped
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert quantizers.spare_pid() is None
    finally:
        quantizers.close()


def test_a_spare_quantizer_whose_parent_goes_exits(tmp_path: Path) -> None:
    """Started ahead of any job, the subprocess waits on stdin; if that closes, it exits at once."""
    process = _spawn()
    try:
        assert process.stdin is not None
        time.sleep(0.2)
        assert process.poll() is None
        process.stdin.close()
        assert process.wait(timeout=20) == 3
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_a_killed_server_leaves_no_spare_quantizer(server: ServerProcess, smollm2_f16_gguf: Path) -> None:
    """The spare a server keeps after a quantizing create goes with the server, even killed."""
    assert server.process is not None
    with server.client() as client:
        digest = upload_blob(client, smollm2_f16_gguf)
        body = {"model": "smol", "files": {smollm2_f16_gguf.name: digest}, "quantize": "Q4_0", "stream": False}
        assert client.post("/api/create", json=body, timeout=300).json() == {"status": "success"}
    deadline = time.monotonic() + 20
    while not (spares := _worker_children(server.process.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (spare,) = spares
    assert _quantizers(server.models) == []
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    deadline = time.monotonic() + 20
    while not _gone(spare):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_quantizers_own_binding_matches_llama_cpp_pythons() -> None:
    """The subprocess declares ``llama_model_quantize_params`` itself (it does not import
    llama-cpp-python's binding): field for field, offset for offset, the same struct."""
    from llama_cpp import llama_cpp as binding

    from pollama.convert._quantize_worker import QuantizeParams as _QuantizeParams
    from pollama.convert._quantize_worker import bind as _bind
    from pollama.convert.quantize import _libllama

    ours = [
        (name, getattr(_QuantizeParams, name).offset, getattr(_QuantizeParams, name).size)
        for name, _ in _QuantizeParams._fields_
    ]
    theirs = [
        (
            name,
            getattr(binding.llama_model_quantize_params, name).offset,
            getattr(binding.llama_model_quantize_params, name).size,
        )
        for name, _ in binding.llama_model_quantize_params._fields_
    ]
    assert ours == theirs
    assert ctypes.sizeof(_QuantizeParams) == ctypes.sizeof(binding.llama_model_quantize_params)
    theirs_defaults = binding.llama_model_quantize_default_params()
    ours_defaults = _bind(str(_libllama())).llama_model_quantize_default_params()
    for name, kind in _QuantizeParams._fields_:
        mine, other = getattr(ours_defaults, name), getattr(theirs_defaults, name)
        if kind is ctypes.c_void_p:  # the pointers (NULL by default), typed there, untyped here
            other = ctypes.cast(other, ctypes.c_void_p).value
        assert mine == other, name
    assert (ours_defaults.nthread, ours_defaults.allow_requantize) == (0, False)


def test_a_quantizer_whose_parent_goes_before_its_source_deletes_its_output(tmp_path: Path) -> None:
    """Started ahead of its work, the subprocess waits for its source on stdin; if the pipe closes
    first (the server died), it removes its output file and exits at once."""
    output = tmp_path / "out.gguf"
    output.write_bytes(b"")
    quantizer = Quantizer(output, "Q4_0")
    try:
        process = quantizer._process
        assert process.stdin is not None and process.poll() is None
        process.stdin.close()
        assert process.wait(timeout=20) == 3
        assert not output.exists()
    finally:
        quantizer.close()


def test_a_wrong_guess_of_the_source_is_replaced(tmp_path: Path, smollm2_f16_gguf: Path) -> None:
    """A create hands its quantizer the likeliest source before reading any header; if the model
    layer turns out to be another file, that quantizer and its output go and a new one runs."""
    store = ModelStore(tmp_path / "models")
    store.blobs.root.mkdir(parents=True)
    right = store.blobs.path("sha256:" + "1" * 64)
    wrong = store.blobs.path("sha256:" + "2" * 64)
    os.link(smollm2_f16_gguf, right)
    wrong.write_bytes(smollm2_f16_gguf.read_bytes() + b"\0")  # the larger: the guess
    request = CreateRequest(
        name=parse_name("x"), files={"a.gguf": "sha256:" + "1" * 64, "b.gguf": "sha256:" + "2" * 64}, quantize="Q8_0"
    )
    with _QuantizeStaging(store, "Q8_0", request) as staging:
        (first,) = _temporaries(store.root)
        staged, quantizer = staging.take(right)
        assert quantizer.source is None and first not in _temporaries(store.root) and staged.parent.is_dir()
        source = read_gguf(right)
        assert list(quantizer.quantize(source))[-1] == 1.0
        digest = quantizer.digest()
        assert digest == file_digest(staged)
        assert file_type_id("Q8_0") == read_gguf(staged).metadata["general.file_type"]
    assert _temporaries(store.root) == [] and _quantizers(store.root) == []


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_K_M", "Q6_K", "IQ4_NL", "Q2_K"])
def test_the_digest_is_taken_while_the_file_is_written(tmp_path: Path, smollm2_f16_gguf: Path, type_name: str) -> None:
    """The subprocess predicts the header llama.cpp writes last (from a dry run) and hashes the
    file as it is written: for llama.cpp's mixes (K-quants with their fallbacks, an i-quant) the
    prediction holds, so no second pass is needed, and the digest is the file's."""
    output = tmp_path / "out.gguf"
    with Quantizer(output, type_name) as quantizer:
        assert list(quantizer.quantize(read_gguf(smollm2_f16_gguf)))[-1] == 1.0
        digest = quantizer.digest()
    assert quantizer.streamed
    assert digest == file_digest(output)
    written = read_gguf(output)
    assert written.metadata["general.file_type"] == file_type_id(type_name)
    assert quantizer.header() == written  # the predicted header, parsed while llama.cpp worked
    assert not (tmp_path / "out.gguf.header").exists()  # its hand-over file is gone


@pytest.mark.parametrize("predicted", [True, False])
def test_a_streamed_digest_is_kept_only_if_the_header_written_last_is_the_predicted_one(
    tmp_path: Path, predicted: bool
) -> None:
    """As llama.cpp does: zeros where the header goes, the body written in pieces, then the header."""
    from pollama.convert._quantize_worker import StreamingHash

    path, header, body = tmp_path / "out.gguf", b"GGUF" + os.urandom(60), os.urandom(3 << 20)
    written = header if predicted else header[:-1] + b"x"
    path.write_bytes(b"\0" * len(header))
    hasher, finished = StreamingHash(str(path), str(tmp_path / "out.gguf.header")), threading.Event()
    fd = os.open(path, os.O_RDONLY)
    follower = threading.Thread(target=hasher.follow, args=(fd, header, finished))
    follower.start()
    try:
        with path.open("r+b") as out:
            out.seek(len(header))
            for start in range(0, len(body), 1 << 18):
                out.write(body[start : start + (1 << 18)])
                out.flush()
                time.sleep(0.002)
            out.seek(0)
            out.write(written)
        finished.set()
        follower.join(timeout=30)
    finally:
        os.close(fd)
    if predicted:
        assert (hasher.digest, hasher.size) == (file_digest(path), len(header) + len(body))
    else:
        assert hasher.digest is None


def test_the_workers_ggml_type_names_are_llama_cpps() -> None:
    """The names a dry run prints for each tensor's type, mapped to ``ggml_type`` values, as
    llama.cpp itself names them."""
    from pollama.convert._quantize_worker import GGML_TYPES
    from pollama.convert._quantize_worker import bind as _bind
    from pollama.convert.quantize import _libllama

    lib = _bind(str(_libllama()))
    lib.ggml_type_name.argtypes, lib.ggml_type_name.restype = [ctypes.c_int], ctypes.c_char_p
    assert {name: lib.ggml_type_name(value).decode() for name, value in GGML_TYPES.items()} == {
        name: name for name in GGML_TYPES
    }
    known = {kind.name: kind.value for kind in gguf.GGMLQuantizationType}  # the gguf package's, too
    assert {name: value for name, value in GGML_TYPES.items() if name.upper() in known} == {
        name: known[name.upper()] for name in GGML_TYPES if name.upper() in known
    }
