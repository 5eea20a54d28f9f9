"""Tokenizer conversion (spec §12.2): tokenizer.json BPE, SentencePiece tokenizer.model, special tokens,
templates and padding, read back with gguf's own reader and with llama.cpp."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from pollama.convert import convert_model
from pollama.convert.tokenizer import read_vocabulary, write_tokenizer
from pollama.errors import UnknownTokenizerFormat
from tests.conftest import save_safetensors

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _bpe_folder(tmp_path: Path, pre: dict[str, Any], **config: Any) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir(exist_ok=True)
    vocab = {"a": 0, "b": 1, "ab": 2, "Ġ": 3}
    tokenizer = {
        "added_tokens": [
            {"id": 4, "content": "<s>", "special": True},
            {"id": 5, "content": "</s>", "special": True},
            {"id": 6, "content": "<tool>", "special": False},
        ],
        "pre_tokenizer": pre,
        "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _split(regex: str) -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


@pytest.mark.parametrize(
    ("pre", "name"),
    [
        (_split(LLAMA3_REGEX), "llama-bpe"),
        (_split(QWEN2_REGEX), "qwen2"),
        (_split(r"\p{N}+"), "default"),
        ({"type": "ByteLevel", "add_prefix_space": False}, "default"),
    ],
)
def test_pre_tokenizer_is_identified_by_its_split_regexes(tmp_path: Path, pre: dict[str, Any], name: str) -> None:
    assert read_vocabulary(_bpe_folder(tmp_path, pre)).pre == name


def test_bpe_vocabulary_special_tokens_template_and_padding(tmp_path: Path) -> None:
    folder = _bpe_folder(
        tmp_path,
        _split(LLAMA3_REGEX),
        bos_token={"content": "<s>", "special": True},
        eos_token="</s>",
        pad_token="</s>",
        add_bos_token=True,
        add_eos_token=False,
        chat_template=[{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages }}"}],
    )
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6]}))
    target = tmp_path / "tok.gguf"
    writer = gguf.GGUFWriter(target, "llama")
    write_tokenizer(writer, folder, vocab_size=10)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    fields = gguf.GGUFReader(target).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    assert fields["tokenizer.ggml.tokens"].contents() == [
        "a", "b", "ab", "Ġ", "<s>", "</s>", "<tool>", "[PAD7]", "[PAD8]", "[PAD9]",
    ]  # fmt: skip
    assert fields["tokenizer.ggml.token_type"].contents() == [1, 1, 1, 1, 3, 3, 4, 4, 4, 4]
    assert fields["tokenizer.ggml.scores"].contents() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -1.0, -1.0]
    assert fields["tokenizer.ggml.merges"].contents() == ["a b"]
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 4
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 5
    assert fields["tokenizer.ggml.padding_token_id"].contents() == 5
    assert fields["tokenizer.ggml.eos_token_ids"].contents() == [5, 6]
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["tokenizer.ggml.add_eos_token"].contents() is False
    assert fields["tokenizer.chat_template"].contents() == "{{ messages }}"


def test_no_tokenizer_is_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UnknownTokenizerFormat, match="^unknown tokenizer format$"):
        read_vocabulary(tmp_path)


# --- SentencePiece ----------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _sentencepiece_model(pieces: list[tuple[str, float, int]]) -> bytes:
    """A ModelProto by sentencepiece_model.proto: repeated pieces (1), normalizer_spec (3)."""
    out = b""
    for piece, score, kind in pieces:
        body = (
            _field(1, piece.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", score) + _varint(3 << 3) + _varint(kind)
        )
        out += _field(1, body)
    out += _field(2, _varint(3 << 3) + _varint(2))  # trainer_spec.model_type = BPE (ignored)
    out += _field(3, _varint(3 << 3) + _varint(1))  # normalizer_spec.add_dummy_prefix = true
    return out


def test_sentencepiece_model_converts_and_llama_cpp_tokenizes_with_it(tmp_path: Path) -> None:
    from llama_cpp import Llama

    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = ["▁hello", "▁world"]
    subwords = sorted({w[:i] for w in words for i in range(2, len(w) + 1)}, key=len)
    pieces += [(s, -float(10 - len(s)), 1) for s in subwords]
    pieces += [(c, -20.0, 1) for c in sorted(set("▁helowrd"))]
    folder = tmp_path / "spm"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model(pieces))
    (folder / "added_tokens.json").write_text(json.dumps({"<|im_start|>": len(pieces)}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": {str(len(pieces)): {"content": "<|im_start|>", "special": True}}})
    )
    vocab_size = len(pieces) + 3
    hidden, ffn = 32, 64
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def f32(*shape: int) -> tuple[str, object]:
        return ("F32", rng.normal(0, 0.1, shape).astype(np.float32))

    save_safetensors(
        folder / "model.safetensors",
        {
            "model.embed_tokens.weight": f32(vocab_size, hidden),
            "model.layers.0.input_layernorm.weight": f32(hidden),
            "model.layers.0.post_attention_layernorm.weight": f32(hidden),
            **{f"model.layers.0.self_attn.{m}_proj.weight": f32(hidden, hidden) for m in "qkvo"},
            "model.layers.0.mlp.gate_proj.weight": f32(ffn, hidden),
            "model.layers.0.mlp.up_proj.weight": f32(ffn, hidden),
            "model.layers.0.mlp.down_proj.weight": f32(hidden, ffn),
            "model.norm.weight": f32(hidden),
            "lm_head.weight": f32(vocab_size, hidden),
        },
    )
    target = tmp_path / "spm.gguf"
    convert_model(folder, target)

    fields = gguf.GGUFReader(target).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert tokens[: len(pieces)] == [p for p, _, _ in pieces]
    assert tokens[len(pieces) :] == ["<|im_start|>", f"[PAD{len(pieces) + 1}]", f"[PAD{len(pieces) + 2}]"]
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[: len(pieces)] == [k for _, _, k in pieces]
    assert types[len(pieces)] == 3
    scores = fields["tokenizer.ggml.scores"].contents()
    assert scores[: len(pieces)] == pytest.approx([s for _, s, _ in pieces])
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is True

    llm = Llama(model_path=str(target), vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(b"hello world", add_bos=False, special=True)
        assert [tokens[i] for i in ids] == ["▁hello", "▁world"]
        assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [len(pieces)]
    finally:
        llm.close()
