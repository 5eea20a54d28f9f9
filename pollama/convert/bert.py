"""BERT-style embedding models (``BertModel``, ``NomicBertModel``) → a GGUF llama.cpp loads as ``bert``
or ``nomic-bert``.

The GGUF gets llama.cpp's tensor names (``gguf``'s ``TensorNameMap``), the WordPiece vocabulary as
llama.cpp's ``bert`` tokenizer wants it (word-initial pieces with a ``▁`` prefix, ``##`` continuations
bare, special tokens as control tokens), the special token ids, non-causal attention and the pooling
that sentence-transformers' ``modules.json`` names (mean when the folder has none). Whether the
model normalises its output (a ``Normalize`` module) is not stored: ``/api/embed`` always
L2-normalises, as Ollama does. Tensors are read through ``TensorSource`` and written one at a time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from pollama.convert.source import TensorSource
from pollama.convert.tensors import PlannedTensor, declare_tensors, from_source, gguf_name, write_file
from pollama.errors import ConversionError, UnsupportedArchitecture

log = logging.getLogger(__name__)

_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")
_F32_TENSORS = ("position_embd", "token_types")
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "mask")
_POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}


@dataclass(frozen=True)
class _Params:
    arch: gguf.MODEL_ARCH
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_ctx: int
    norm_eps: float
    n_token_types: int
    vocab_size: int
    rope_base: float | None = None


def convert(folder: Path, config: dict[str, Any], dst: Path) -> None:
    """Write the GGUF of the BERT or NomicBERT model in ``folder`` (``config`` is its ``config.json``) to ``dst``."""
    architecture = str((config.get("architectures") or [""])[0])
    if architecture == "BertModel":
        params = _bert_params(config)
    elif architecture == "NomicBertModel":
        params = _nomic_params(config)
    else:
        raise UnsupportedArchitecture(architecture)
    tokens, types = _vocabulary(folder, params.vocab_size)
    with TensorSource(folder) as source:
        tensors = _tensor_plan(source, params)
        try:
            _write(dst, folder, config, params, tokens, types, tensors)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise


def _int(config: dict[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    if default is None:
        raise ConversionError(f"config.json has no {keys[0]}")
    return default


def _bert_params(config: dict[str, Any]) -> _Params:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"unsupported position_embedding_type {config['position_embedding_type']!r}")
    if config.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ConversionError(f"unsupported hidden_act {config['hidden_act']!r}")
    return _Params(
        arch=gguf.MODEL_ARCH.BERT,
        n_embd=_int(config, "hidden_size"),
        n_layer=_int(config, "num_hidden_layers"),
        n_head=_int(config, "num_attention_heads"),
        n_ff=_int(config, "intermediate_size"),
        n_ctx=_int(config, "max_position_embeddings", default=512),
        norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        n_token_types=_int(config, "type_vocab_size", default=2),
        vocab_size=_int(config, "vocab_size"),
    )


def _nomic_params(config: dict[str, Any]) -> _Params:
    if config.get("moe_every_n_layers"):
        raise UnsupportedArchitecture("NomicBertMoEModel")
    wanted = {
        "activation_function": "swiglu",
        "prenorm": False,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
    }
    for key, value in wanted.items():
        if key in config and config[key] != value:
            raise ConversionError(f"unsupported NomicBert setting {key}={config[key]!r}")
    n_positions = _int(config, "n_positions", "max_position_embeddings", default=2048)
    trained = _int(config, "max_trained_positions", default=n_positions)
    return _Params(
        arch=gguf.MODEL_ARCH.NOMIC_BERT,
        n_embd=_int(config, "n_embd", "hidden_size"),
        n_layer=_int(config, "n_layer", "num_hidden_layers"),
        n_head=_int(config, "n_head", "num_attention_heads"),
        n_ff=_int(config, "n_inner", "intermediate_size"),
        n_ctx=min(n_positions, trained),  # nomic-embed-text declares 8192 positions but was trained on 2048
        norm_eps=float(config.get("layer_norm_epsilon", 1e-12)),
        n_token_types=_int(config, "type_vocab_size", default=2),
        vocab_size=_int(config, "vocab_size"),
        rope_base=float(config.get("rotary_emb_base", 10000.0)),
    )


# --- vocabulary -----------------------------------------------------------------------------------


def _vocabulary(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """WordPiece tokens by id, in llama.cpp's ``bert`` form, with their token types."""
    by_id: dict[int, str] = {}
    special: set[int] = set()
    added: set[int] = set()
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        data = _read_json(tokenizer_json)
        model = data.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ConversionError(f"unsupported tokenizer {model.get('type')!r} for a BERT model")
        by_id = {int(i): str(t) for t, i in (model.get("vocab") or {}).items()}
        for tok in data.get("added_tokens") or []:
            by_id[int(tok["id"])] = str(tok["content"])
            (special if tok.get("special") else added).add(int(tok["id"]))
    elif (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        by_id = dict(enumerate(lines))
        names = set(_special_token_names(folder))
        special = {i for i, t in by_id.items() if t in names}
    else:
        raise ConversionError("unknown tokenizer format")
    count = max(vocab_size, max(by_id, default=-1) + 1)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(count):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.USER_DEFINED))
        elif i in special:
            tokens.append(token)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            # llama.cpp's WPM tokenizer marks word starts with U+2581 and keeps continuations bare.
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(int(gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL))
    return tokens, types


def _special_token_names(folder: Path) -> list[str]:
    names: list[str] = []
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / file
        if not path.is_file():
            continue
        for key, value in _read_json(path).items():
            if not key.endswith("_token"):
                continue
            content = value.get("content") if isinstance(value, dict) else value
            if isinstance(content, str):
                names.append(content)
    return names


def _pooling(folder: Path) -> gguf.PoolingType:
    """The pooling sentence-transformers applies (``modules.json`` → the Pooling module's config); mean if none."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return gguf.PoolingType.MEAN
    modules = _read_json(modules_path)
    for module in modules if isinstance(modules, list) else []:
        if str(module.get("type", "")).endswith("Pooling"):
            config_path = folder / str(module.get("path", "")) / "config.json"
            pooling = _read_json(config_path) if config_path.is_file() else {}
            if pooling.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if pooling.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            if pooling.get("pooling_mode_lasttoken"):
                return gguf.PoolingType.LAST
            mode = pooling.get("pooling_mode")
            if mode in _POOLING:
                return _POOLING[mode]
            raise ConversionError("unsupported pooling: only mean, cls and lasttoken pooling can be converted")
    return gguf.PoolingType.MEAN


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path.name}: {exc}") from None


# --- tensors --------------------------------------------------------------------------------------


def _tensor_plan(source: TensorSource, params: _Params) -> list[PlannedTensor]:
    """Every tensor llama.cpp needs, named as it wants, with its output type."""
    names = gguf.get_tensor_name_map(params.arch, params.n_layer)
    plan: list[PlannedTensor] = []
    seen: set[str] = set()
    for hf_name in source.names():
        name = hf_name.removeprefix("bert.")
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        elif name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        if name.startswith(_SKIPPED):
            continue
        target = gguf_name(names, hf_name, seen, lookup=name)
        plan.append(from_source(source, hf_name, target, f32=target.startswith(_F32_TENSORS)))
    if "token_embd.weight" not in seen:
        raise ConversionError("the model has no token embeddings")
    return plan


def _write(
    dst: Path,
    folder: Path,
    config: dict[str, Any],
    params: _Params,
    tokens: list[str],
    types: list[int],
    tensors: list[PlannedTensor],
) -> None:
    arch = gguf.MODEL_ARCH_NAMES[params.arch]
    writer = gguf.GGUFWriter(dst, arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(str(config.get("_name_or_path") or folder.name).rsplit("/", 1)[-1])
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(params.n_ctx)
        writer.add_embedding_length(params.n_embd)
        writer.add_feed_forward_length(params.n_ff)
        writer.add_block_count(params.n_layer)
        writer.add_head_count(params.n_head)
        writer.add_layer_norm_eps(params.norm_eps)
        writer.add_causal_attention(False)
        writer.add_pooling_type(_pooling(folder))
        if params.rope_base is not None:
            writer.add_rope_freq_base(params.rope_base)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_type_count(params.n_token_types)
        special = gguf.SpecialVocab(folder, load_merges=False, special_token_types=_SPECIAL_TYPES, n_vocab=len(tokens))
        special.add_to_gguf(writer, quiet=True)
        cls = gguf.SpecialVocab(folder, load_merges=False, special_token_types=("cls",), n_vocab=len(tokens))
        if isinstance(cls.special_token_ids.get("cls"), int):
            writer.add_uint32("tokenizer.ggml.cls_token_id", cls.special_token_ids["cls"])  # Ollama writes it too
        declare_tensors(writer, tensors)
        write_file(writer, tensors)
    finally:
        writer.close()
    log.info("converted %s to %s (%d tensors)", folder, dst, len(tensors))
