"""ADAPTER layers: a LoRA GGUF is stored with the model and applied by the runner at load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np

from pollama.gguf import read_gguf
from tests.conftest import ServerProcess, create_from_gguf


def write_lora(path: Path, base: Path, *, scale: float, rank: int = 8) -> Path:
    """A LoRA adapter for every attn_q of ``base`` (zeros when ``scale`` is 0)."""
    header = read_gguf(base)
    layers = int(header.arch_value("block_count"))
    n_embd = int(header.arch_value("embedding_length"))
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(str(path), header.architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for layer in range(layers):
        a = (rng.standard_normal((rank, n_embd)) * scale).astype(np.float32)
        b = (rng.standard_normal((n_embd, rank)) * scale).astype(np.float32)
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_a", a)
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def upload(c, path: Path) -> str:  # type: ignore[no-untyped-def]
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    r = c.post(f"/api/blobs/{digest}", content=path.read_bytes())
    assert r.status_code in (200, 201), r.text
    return digest


def test_lora_adapter_is_applied(server: ServerProcess, smollm2_gguf: Path, tmp_path: Path) -> None:
    weights = "sha256:" + hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    with server.client() as c:
        create_from_gguf(c, "base", smollm2_gguf)
        for name, scale in (("zero", 0.0), ("noisy", 0.3)):
            adapter = upload(c, write_lora(tmp_path / f"{name}.gguf", smollm2_gguf, scale=scale))
            r = c.post(
                "/api/create",
                json={
                    "model": name,
                    "files": {smollm2_gguf.name: weights},
                    "adapters": {f"{name}.gguf": adapter},
                    "stream": False,
                },
            )
            assert r.status_code == 200, r.text
            show = c.post("/api/show", json={"model": name}).json()
            assert "ADAPTER " in show["modelfile"]

        def greedy(model: str) -> str:
            r = c.post(
                "/api/generate",
                json={
                    "model": model,
                    "prompt": "The capital of France is",
                    "raw": True,
                    "stream": False,
                    "options": {"temperature": 0, "num_predict": 12},
                },
            )
            assert r.status_code == 200, r.text
            return str(r.json()["response"])

        plain = greedy("base")
        assert greedy("zero") == plain  # a zero update changes nothing...
        assert greedy("noisy") != plain  # ...and a real one changes the answer
        assert greedy("base") == plain
