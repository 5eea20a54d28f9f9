"""GGUF model files: reading headers fast (``read_gguf``) and what Ollama derives from them
(``file_type_name``, ``human_number``, ``gguf_capabilities``, ``model_info``, ``estimate_memory``;
for projectors ``is_projector`` and ``projector_info``)."""

from pollama.gguf.info import (
    context_length,
    embedding_length,
    estimate_memory,
    file_type_name,
    gguf_capabilities,
    human_number,
    is_projector,
    kv_cache_bytes,
    model_info,
    projector_info,
    tensor_list,
)
from pollama.gguf.reader import GGUFFile, NotGGUF, SkippedArray, TensorInfo, is_gguf, parse_gguf_header, read_gguf

__all__ = [
    "GGUFFile",
    "NotGGUF",
    "SkippedArray",
    "TensorInfo",
    "context_length",
    "embedding_length",
    "estimate_memory",
    "file_type_name",
    "gguf_capabilities",
    "human_number",
    "is_gguf",
    "is_projector",
    "kv_cache_bytes",
    "model_info",
    "parse_gguf_header",
    "projector_info",
    "read_gguf",
    "tensor_list",
]
