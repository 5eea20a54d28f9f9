"""A Hugging Face tokenizer as GGUF ``tokenizer.*`` metadata (Ollama's rules, spec §12.2).

``tokenizer.model`` (a SentencePiece protobuf, read here by a small wire-format decoder) becomes
``tokenizer.ggml.model = "llama"`` with its scores and piece types; otherwise ``tokenizer.json`` with a
BPE model becomes ``gpt2`` with its merges, and the pre-tokenizer is identified by the SHA-256 of its
``Split`` regexes. ``tokenizer_config.json`` gives the chat template and the special tokens (and
``generation_config.json`` lists of end-of-turn ids); a vocabulary shorter than ``vocab_size`` is
padded with ``[PAD<i>]`` tokens. WordPiece (BERT) is the BERT converter's business.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from pollama.errors import ConversionError, UnknownTokenizerFormat

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizers llama.cpp knows, by the SHA-256 of their Split regexes joined in order.
_PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}
_PRE_TOKENIZERS = {
    hashlib.sha256("".join(regexes).encode("utf-8")).hexdigest(): name
    for name, regexes in _PRE_TOKENIZER_REGEXES.items()
}

# tokenizer_config.json's names → the GGUF key's middle part (Ollama's spelling, "seperator" included)
_SPECIAL_KEYS = {
    "bos": "bos",
    "eos": "eos",
    "unk": "unknown",
    "sep": "seperator",
    "pad": "padding",
    "cls": "cls",
    "mask": "mask",
}


@dataclass
class Vocabulary:
    """What ends up under ``tokenizer.*``: the model type, the tokens and what the config says of them."""

    model: str
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    pre: str = "default"
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    eog_ids: dict[str, list[int]] = field(default_factory=dict)
    chat_template: str = ""


def read_vocabulary(folder: Path, vocab_size: int = 0) -> Vocabulary:
    """The folder's tokenizer, padded to ``vocab_size``; ``UnknownTokenizerFormat`` if there is none."""
    added = _added_tokens(folder)
    if (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece(folder, added)
    elif (folder / "tokenizer.json").is_file():
        vocab = _bpe(folder)
    else:
        raise UnknownTokenizerFormat()
    _pad(vocab, vocab_size)
    _special_tokens(folder, vocab, added)
    return vocab


def add_vocabulary(writer: gguf.GGUFWriter, vocab: Vocabulary) -> None:
    """Write ``vocab`` as ``tokenizer.*`` keys."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for key, token_id in vocab.special_ids.items():
        writer.add_uint32(f"tokenizer.ggml.{key}_token_id", token_id)
    for key, ids in vocab.eog_ids.items():
        writer.add_array(f"tokenizer.ggml.{key}_token_ids", ids)
    for key, value in vocab.add_special.items():
        writer.add_bool(f"tokenizer.ggml.add_{key}_token", value)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def write_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int = 0) -> Vocabulary:
    """Read the folder's tokenizer (``read_vocabulary``) and write it to ``writer``; returns it."""
    vocab = read_vocabulary(folder, vocab_size)
    add_vocabulary(writer, vocab)
    return vocab


# --- tokenizer.json (BPE) -------------------------------------------------------------------------


def _bpe(folder: Path) -> Vocabulary:
    data = _json(folder / "tokenizer.json")
    model = data.get("model") or {}
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnknownTokenizerFormat()
    by_id: dict[int, str] = {int(i): str(t) for t, i in model["vocab"].items()}
    specials: dict[int, bool] = {}
    for token in data.get("added_tokens") or []:
        by_id[int(token["id"])] = str(token["content"])
        specials[int(token["id"])] = bool(token.get("special"))
    size = max(by_id) + 1 if by_id else 0
    tokens, scores, types = [], [], []
    for token_id in range(size):
        text = by_id.get(token_id)
        if text is None:
            tokens.append(f"[PAD{token_id}]")
            scores.append(-1.0)
            types.append(USER_DEFINED)
            continue
        tokens.append(text)
        scores.append(float(token_id))
        if token_id in specials:
            types.append(CONTROL if specials[token_id] else USER_DEFINED)
        else:
            types.append(NORMAL)
    merges = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            merges.append(merge)
        elif isinstance(merge, list) and len(merge) == 2:
            merges.append(f"{merge[0]} {merge[1]}")
        else:
            raise ConversionError("tokenizer.json: bad merge entry")
    return Vocabulary("gpt2", tokens, scores, types, merges, pre=_pre_tokenizer(data.get("pre_tokenizer")))


def _pre_tokenizer(pre: Any) -> str:
    """``llama-bpe``, ``qwen2``, ... by the SHA-256 of the Split regexes, else ``default``.

    A Digits(individual) + ByteLevel sequence with no Split (SmolLM's) is llama.cpp's ``smollm``.
    """
    if not isinstance(pre, dict):
        return "default"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(parts, list):
        return "default"
    regexes = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "Split":
            pattern = part.get("pattern") or {}
            if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
                regexes.append(pattern["Regex"])
    if regexes:
        return _PRE_TOKENIZERS.get(hashlib.sha256("".join(regexes).encode("utf-8")).hexdigest(), "default")
    kinds = [part.get("type") for part in parts if isinstance(part, dict)]
    digits = [p for p in parts if isinstance(p, dict) and p.get("type") == "Digits"]
    if kinds == ["Digits", "ByteLevel"] and digits[0].get("individual_digits"):
        return "smollm"
    return "default"


# --- tokenizer.model (SentencePiece) --------------------------------------------------------------


def _sentencepiece(folder: Path, added: dict[str, tuple[int, bool]]) -> Vocabulary:
    try:
        data = (folder / "tokenizer.model").read_bytes()
    except OSError as exc:
        raise ConversionError(f"tokenizer.model: {exc}") from None
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    add_dummy_prefix = True
    try:
        for number, value in _protobuf_fields(data):
            if number == 1 and isinstance(value, bytes):  # ModelProto.pieces
                piece, score, kind = "", 0.0, NORMAL
                for sub, sub_value in _protobuf_fields(value):
                    if sub == 1 and isinstance(sub_value, bytes):
                        piece = sub_value.decode("utf-8")
                    elif sub == 2 and isinstance(sub_value, float):
                        score = sub_value
                    elif sub == 3 and isinstance(sub_value, int):
                        kind = sub_value
                tokens.append(piece)
                scores.append(score)
                types.append(kind if kind in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)
            elif number == 3 and isinstance(value, bytes):  # ModelProto.normalizer_spec
                for sub, sub_value in _protobuf_fields(value):
                    if sub == 3 and isinstance(sub_value, int):  # add_dummy_prefix
                        add_dummy_prefix = bool(sub_value)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        raise ConversionError("tokenizer.model: not a SentencePiece model") from None
    if not tokens:
        raise ConversionError("tokenizer.model: not a SentencePiece model")
    index = {token: i for i, token in enumerate(tokens)}
    for text, (token_id, special) in sorted(added.items(), key=lambda item: item[1][0]):
        if text in index:
            if special:
                types[index[text]] = CONTROL
            continue
        if token_id != len(tokens):
            continue  # an added token that does not extend the vocabulary in order
        tokens.append(text)
        scores.append(-1000.0)
        types.append(CONTROL if special else USER_DEFINED)
        index[text] = token_id
    return Vocabulary("llama", tokens, scores, types, add_space_prefix=add_dummy_prefix)


def _protobuf_fields(data: bytes) -> list[tuple[int, int | float | bytes]]:
    """The top-level fields of a protobuf message: varints as int, 32-bit as float, bytes as bytes."""
    fields: list[tuple[int, int | float | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((number, value))
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 5:
            fields.append((number, struct.unpack_from("<f", data, pos)[0]))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


# --- special tokens, templates, padding -----------------------------------------------------------


def _added_tokens(folder: Path) -> dict[str, tuple[int, bool]]:
    """Added tokens (content → id, special) from tokenizer.json, tokenizer_config.json, added_tokens.json."""
    added: dict[str, tuple[int, bool]] = {}
    path = folder / "added_tokens.json"
    if path.is_file():
        for text, token_id in _json(path).items():
            added[str(text)] = (int(token_id), False)
    config = _json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for token_id, token in decoder.items():
            if isinstance(token, dict) and "content" in token:
                added[str(token["content"])] = (int(token_id), bool(token.get("special")))
    if (folder / "tokenizer.json").is_file():
        for token in _json(folder / "tokenizer.json").get("added_tokens") or []:
            added[str(token["content"])] = (int(token["id"]), bool(token.get("special")))
    return added


def _special_tokens(folder: Path, vocab: Vocabulary, added: dict[str, tuple[int, bool]]) -> None:
    config_path = folder / "tokenizer_config.json"
    config = _json(config_path) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(template, str) and (folder / "chat_template.json").is_file():
        template = _json(folder / "chat_template.json").get("chat_template")
    vocab.chat_template = template if isinstance(template, str) else ""
    index = {token: i for i, token in enumerate(vocab.tokens)}
    for name, key in _SPECIAL_KEYS.items():
        value = config.get(f"{name}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            token_id = added[value][0] if value in added else index.get(value)
            if token_id is not None and 0 <= token_id < len(vocab.tokens):
                vocab.special_ids[key] = token_id
        flag = config.get(f"add_{name}_token")
        if isinstance(flag, bool):
            vocab.add_special[key] = flag
    generation_path = folder / "generation_config.json"
    generation = _json(generation_path) if generation_path.is_file() else {}
    for name, key in _SPECIAL_KEYS.items():
        value = generation.get(f"{name}_token_id")
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            vocab.eog_ids[key] = list(value)
            if value and key not in vocab.special_ids:
                vocab.special_ids[key] = value[0]
        elif isinstance(value, int) and key not in vocab.special_ids:
            vocab.special_ids[key] = value


def _pad(vocab: Vocabulary, vocab_size: int) -> None:
    for token_id in range(len(vocab.tokens), vocab_size):
        vocab.tokens.append(f"[PAD{token_id}]")
        vocab.scores.append(-1.0)
        vocab.types.append(USER_DEFINED)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path.name}: {exc}") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path.name}: not a JSON object")
    return value
