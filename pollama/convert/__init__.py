"""Hugging Face model folders (``config.json``, tokenizer files, safetensors) → GGUF files llama.cpp loads.

``convert_model`` picks the converter by ``config.json``'s ``architectures[0]`` from a table of
module paths, imported only when used; each converter module exposes
``convert(folder, config, dst)`` and writes a complete GGUF at ``dst``. ``convert_adapter`` turns a
PEFT LoRA folder into a GGUF LoRA adapter for a base model's GGUF. Nothing here knows about the
models directory: the caller chooses ``dst`` (a temporary file) and removes it on failure.

- ``source.py``: ``TensorSource``, the tensors of single or sharded safetensors files, memory-mapped.
- ``tokenizer.py``: ``tokenizer.json`` (BPE) / ``tokenizer.model`` (SentencePiece) → ``tokenizer.*`` keys.
- ``decoder.py``: Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3, Phi3.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from pollama.errors import ConversionError, UnsupportedArchitecture

# architectures[0] → the module whose ``convert(folder, config, dst)`` handles it
CONVERTERS: dict[str, str] = {
    "LlamaForCausalLM": "pollama.convert.decoder",
    "MistralForCausalLM": "pollama.convert.decoder",
    "Qwen2ForCausalLM": "pollama.convert.decoder",
    "Qwen3ForCausalLM": "pollama.convert.decoder",
    "Gemma2ForCausalLM": "pollama.convert.decoder",
    "Gemma3ForCausalLM": "pollama.convert.decoder",
    "Phi3ForCausalLM": "pollama.convert.decoder",
    "BertModel": "pollama.convert.bert",
    "NomicBertModel": "pollama.convert.bert",
}


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict (``ConversionError`` if missing or not a JSON object)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError("open config.json: no such file or directory") from None  # Go's os.DirFS wording
    except (OSError, ValueError) as exc:
        raise ConversionError(f"config.json: {exc}") from None
    if not isinstance(config, dict):
        raise ConversionError("config.json: not a JSON object")
    return config


def convert_model(folder: Path, dst: Path) -> None:
    """Convert the Hugging Face model in ``folder`` to a GGUF file at ``dst``.

    Raises ``UnsupportedArchitecture`` (``unsupported architecture "X"``) for an architecture
    without a converter, ``UnknownTokenizerFormat`` without tokenizer files, ``ConversionError``
    for unreadable files.
    """
    config = read_config(folder)
    architectures = config.get("architectures")
    architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else ""
    module_path = CONVERTERS.get(architecture)
    if module_path is None:
        raise UnsupportedArchitecture(architecture)
    module = importlib.import_module(module_path)
    module.convert(folder, config, dst)


def convert_adapter(folder: Path, base_gguf: Path, dst: Path) -> None:
    """Convert the PEFT LoRA adapter in ``folder`` (for the model in ``base_gguf``) to a GGUF adapter at ``dst``."""
    module = importlib.import_module("pollama.convert.lora")
    module.convert(folder, base_gguf, dst)
