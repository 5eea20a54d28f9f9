"""SmolLM2 as a BF16, sharded Hugging Face folder, imported with ``FROM ./folder`` through a real server.

The reference is a numpy forward pass of the Hugging Face Llama (``convert_reference.forward``) over
the folder's own safetensors: llama.cpp running the converted GGUF must pick its argmax at every
greedy step, with logprobs within 0.05. Where the reference's best two tokens are themselves
within that tolerance (a near-tie: llama.cpp's F16 kernels differ from one CPU to another, AVX2 or
AVX-512, by about 0.01), either of them is llama.cpp's argmax.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _POLLAMA_SERVER_VARIABLES, ServerProcess
from tests.convert.convert_reference import byte_level_alphabet, forward, load_folder, log_softmax

LOGPROB_TOLERANCE = 0.05
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, smollm2_hf_folder: Path) -> Iterator[ServerProcess]:
    """A server with ``smol-hf`` created by the CLI from ``FROM <folder>`` (no TEMPLATE line)."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_") and k not in _POLLAMA_SERVER_VARIABLES}
    env.update(HOME=str(home), OLLAMA_MODELS=str(home / ".ollama" / "models"))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        proc = ServerProcess(home, {"OLLAMA_CONTEXT_LENGTH": "512"}).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        modelfile = home / "Modelfile"
        modelfile.write_text(f"FROM {smollm2_hf_folder}\n")
        result = proc.cli("create", "smol-hf", "-f", str(modelfile), timeout=300)
        assert result.returncode == 0, result.stderr
        proc.create_output = result.stdout + result.stderr  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def reference_weights(smollm2_hf_folder: Path) -> dict[str, Any]:
    """The folder's tensors in F32, read by the reference's own safetensors reader."""
    return load_folder(smollm2_hf_folder)


def test_create_reports_conversion(imported: ServerProcess) -> None:
    output = imported.create_output  # type: ignore[attr-defined]
    assert "converting model" in output
    assert "writing manifest" in output and "success" in output


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_match_reference(
    imported: ServerProcess, smollm2_hf_folder: Path, reference_weights: dict[str, Any], prompt: str
) -> None:
    from tokenizers import Tokenizer  # Hugging Face's tokenizer, on the fixture's tokenizer.json

    tokenizer = Tokenizer.from_file(str(smollm2_hf_folder / "tokenizer.json"))
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    with imported.client() as client:
        r = client.post(
            "/api/generate",
            json={
                "model": "smol-hf",
                "prompt": prompt,
                "raw": True,
                "stream": False,
                "logprobs": True,
                "options": {"temperature": 0, "num_predict": 12, "seed": 1},
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prompt_eval_count"] == len(prompt_ids)
    entries: list[dict[str, Any]] = body["logprobs"]
    assert len(entries) == body["eval_count"] > 0

    decoder = {c: b for b, c in byte_level_alphabet().items()}
    vocab = json.loads((smollm2_hf_folder / "tokenizer.json").read_text())["model"]["vocab"]
    by_bytes = {bytes(decoder[c] for c in token): i for token, i in vocab.items() if all(c in decoder for c in token)}
    generated = [by_bytes[bytes(entry["bytes"])] for entry in entries]

    config = json.loads((smollm2_hf_folder / "config.json").read_text())
    logits = forward(config, reference_weights, prompt_ids + generated[:-1])
    reference = log_softmax(logits[len(prompt_ids) - 1 :])
    for step, (entry, token) in enumerate(zip(entries, generated, strict=True)):
        best = int(reference[step].argmax())
        assert token == best or reference[step, best] - reference[step, token] < LOGPROB_TOLERANCE, (step, token, best)
        assert abs(entry["logprob"] - reference[step, token]) < LOGPROB_TOLERANCE, (step, entry, reference[step, token])


def test_chat_uses_the_models_own_template(imported: ServerProcess) -> None:
    with imported.client() as client:
        r = client.post(
            "/api/chat",
            json={
                "model": "smol-hf",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "stream": False,
                "options": {"temperature": 0, "num_predict": 16},
            },
        )
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["message"]["content"]


def test_show_and_list_report_the_import(imported: ServerProcess) -> None:
    with imported.client() as client:
        show = client.post("/api/show", json={"model": "smol-hf"}).json()
        tags = client.get("/api/tags").json()
    details = show["details"]
    assert details["format"] == "gguf"
    assert details["family"] == "llama"
    assert details["families"] == ["llama"]
    assert details["parameter_size"] == "134.52M"
    assert details["quantization_level"] == "F16"
    info = show["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["general.file_type"] == 1
    assert info["general.quantization_version"] == 2
    assert info["general.parameter_count"] == 134515008
    assert info["llama.block_count"] == 30
    assert info["llama.attention.head_count_kv"] == 3
    assert "<|im_start|>" in show["template"]  # the model's own chat template
    (model,) = [m for m in tags["models"] if m["name"] == "smol-hf:latest"]
    assert model["details"]["family"] == "llama"
    assert model["details"]["parameter_size"] == "134.52M"
    assert model["details"]["quantization_level"] == "F16"
    # BF16 weights stay BF16: 134.5M parameters at 2 bytes (norms in F32), plus the tokenizer
    assert 269_000_000 < model["size"] < 272_000_000
