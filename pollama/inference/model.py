"""From a model name to what a request needs of the model: the stored model, its header and
capabilities, the checks a request must pass, the merged options, and the runner's ``LoadSpec``.

``ModelCatalog`` reads the store and the GGUF header off the event loop (both touch the disk) and
keeps what it read per manifest digest. The rest are plain functions of what it returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from pollama.config import Settings
from pollama.errors import InvalidRequest, ModelNotFound, ParameterError, PollamaError, UnsupportedCapability
from pollama.gguf import GGUFFile, read_gguf
from pollama.gguf.info import context_length, estimate_memory
from pollama.inference.grammar import JSON_GRAMMAR
from pollama.inference.media import check_images
from pollama.inference.request import CompletionRequest
from pollama.names import parse_name
from pollama.runner.client import CompletionParams
from pollama.scheduler import LoadSpec
from pollama.store import ModelStore, StoredModel
from pollama.store.capabilities import model_capabilities
from pollama.template.builder import ModelTemplates
from pollama.template.jinja import template_tokens

_LOAD_OPTIONS = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "draft_num_predict",
)
DRAFT_NUM_PREDICT = 4
"""Draft tokens per step for a model with a DRAFT layer when ``draft_num_predict`` is unset (Ollama's default)."""
_CACHE_SIZE = 256


@dataclass(frozen=True)
class ModelInfo:
    """What is read once per manifest digest: the GGUF header, the capabilities, the Jinja template
    and the special tokens it is rendered with."""

    gguf: GGUFFile | None
    capabilities: list[str]
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False


class ModelCatalog:
    """The installed models as requests see them."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._info: dict[str, ModelInfo] = {}
        # One header read per digest at a time: a cold burst of requests shares it instead of each
        # parsing the whole header (megabytes of Python objects apiece) in its own worker thread.
        self._reading: dict[str, asyncio.Future[ModelInfo]] = {}

    async def load(self, requested: str) -> StoredModel:
        """The installed model called ``requested`` (Ollama's not-found message otherwise)."""
        if not requested:
            raise InvalidRequest("model is required")
        name = parse_name(requested)
        try:
            return await anyio.to_thread.run_sync(self.store.load, name)
        except ModelNotFound:
            raise ModelNotFound(f"model '{requested}' not found") from None

    async def info(self, model: StoredModel) -> ModelInfo:
        """``model``'s header and capabilities (read once per manifest digest)."""
        info = self._info.get(model.digest)
        if info is not None:
            return info
        digest = model.digest
        reading = self._reading.get(digest)
        if reading is None:
            reading = asyncio.ensure_future(anyio.to_thread.run_sync(read_info, model))
            self._reading[digest] = reading
            reading.add_done_callback(lambda _: self._reading.pop(digest, None))
        info = await asyncio.shield(reading)
        if len(self._info) >= _CACHE_SIZE:
            self._info.clear()
        self._info[digest] = info
        return info


def read_info(model: StoredModel) -> ModelInfo:
    """Read ``model``'s GGUF header (all arrays: the token list names the special tokens)."""
    gguf = None
    if model.model_path is not None and model.model_path.is_file():
        gguf = read_gguf(model.model_path, arrays="all")
    capabilities = model_capabilities(model, gguf)
    if gguf is None:
        return ModelInfo(gguf=None, capabilities=capabilities)
    chat_template = gguf.metadata.get("tokenizer.chat_template")
    bos, eos = template_tokens(gguf.metadata)
    return ModelInfo(
        gguf=gguf,
        capabilities=capabilities,
        chat_template=chat_template if isinstance(chat_template, str) and chat_template else None,
        bos_token=bos,
        eos_token=eos,
        add_bos=gguf.metadata.get("tokenizer.ggml.add_bos_token") is True,
    )


def model_templates(model: StoredModel, info: ModelInfo) -> ModelTemplates:
    """What ``model`` brings to prompt building."""
    return ModelTemplates(
        template=model.template,
        system=model.system,
        messages=tuple(model.messages),
        chat_template=info.chat_template,
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        add_bos=info.add_bos,
    )


def default_think(req: CompletionRequest, info: ModelInfo) -> bool | str | None:
    """``think`` as the request sets it, else on for models that can think (Ollama ≥ 0.12.4)."""
    if req.think is None and "thinking" in info.capabilities:
        return True
    return req.think


def check_request(req: CompletionRequest, model: StoredModel, info: ModelInfo) -> None:
    """Refuse a request the model cannot serve, with Ollama's messages."""
    caps = info.capabilities
    full = model.name.full
    if req.raw and (req.template or req.system or req.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    if "completion" not in caps:
        raise UnsupportedCapability(f'"{req.model}" does not support {req.endpoint}')
    if req.tools and "tools" not in caps:
        raise UnsupportedCapability(f"{full} does not support tools")
    if req.suffix and "insert" not in caps:
        raise UnsupportedCapability(f"{full} does not support insert")
    if req.think not in (None, False) and "thinking" not in caps:
        raise UnsupportedCapability(f'"{req.model}" does not support thinking')
    if req.image_count and "vision" not in caps:
        raise InvalidRequest("this model is missing data required for image input")
    check_images([*req.images, *(image for m in req.messages for image in m.get("images") or [])])


def merged_options(model: StoredModel, requested: dict[str, Any]) -> dict[str, Any]:
    """Model PARAMETERs overridden by the request's options, validated."""
    from pollama.modelfile import validate_options

    options = dict(model.params)
    try:
        options.update(validate_options(requested or {}))
    except ParameterError as exc:
        raise PollamaError(str(exc)) from None  # Ollama answers a mistyped option with a 500
    return options


def load_spec(
    settings: Settings, model: StoredModel, info: ModelInfo, options: dict[str, Any], *, embedding: bool
) -> LoadSpec:
    """The runner this request needs: weights, adapters and load-time options."""
    if model.model_path is None or not model.model_path.is_file():
        raise ModelNotFound(f'model "{model.name.display}" not found, try pulling it first')
    num_ctx = int(options.get("num_ctx") or settings.default_num_ctx)
    trained = context_length(info.gguf) if info.gguf is not None else 0
    if trained > 0:
        num_ctx = min(num_ctx, trained)
    parallel = 1 if embedding else settings.num_parallel
    num_batch = int(options.get("num_batch") or 512)
    kv_type = settings.kv_cache_type or "f16"
    spec = LoadSpec(
        name=model.name.display,
        model_path=model.model_path,
        adapters=tuple(model.adapters),
        projectors=tuple(model.projectors),
        **_draft_options(model, options, embedding=embedding),
        num_ctx=num_ctx,
        num_batch=num_batch,
        num_gpu=0
        if settings.force_cpu
        else int(options.get("num_gpu", -1) if options.get("num_gpu") is not None else -1),
        main_gpu=options.get("main_gpu"),
        use_mmap=options.get("use_mmap"),
        use_mlock=bool(options.get("use_mlock") or False),
        num_thread=int(options.get("num_thread") or 0),
        num_parallel=parallel,
        embedding=embedding,
        flash_attention=settings.flash_attention,
        kv_cache_type=kv_type,
        digest=model.digest,
    )
    if info.gguf is None:
        return spec
    # The estimate uses the options as LoadSpec clamped them (an absurd num_ctx is not what loads).
    extra = sum(p.stat().st_size for p in [*model.adapters, *model.projectors] if p.exists())
    if spec.draft is not None and spec.draft.exists():
        extra += spec.draft.stat().st_size  # its KV cache is left out: a draft model is small
    estimate = estimate_memory(
        info.gguf,
        num_ctx=spec.num_ctx,
        num_parallel=spec.num_parallel,
        num_batch=spec.num_batch,
        kv_type=kv_type,
        extra_files=extra,
    )
    return dataclasses.replace(spec, estimated_memory=estimate)


def _draft_options(model: StoredModel, options: dict[str, Any], *, embedding: bool) -> dict[str, Any]:
    """``draft`` and ``draft_num_predict`` of the LoadSpec: Ollama's default is 4 draft tokens per step
    with a DRAFT model and 0 without; 0 (or an embedding request) leaves the draft unloaded."""
    draft = model.draft
    if draft is None or embedding:
        return {}
    value = options.get("draft_num_predict")
    n = int(value) if value is not None else DRAFT_NUM_PREDICT
    return {"draft": draft, "draft_num_predict": n} if n > 0 else {}


def completion_params(
    req: CompletionRequest, prompt: str, options: dict[str, Any], images: list[bytes] | None = None
) -> CompletionParams:
    """The runner's generation request: the prompt and its images (one media marker each), the
    sampling options (the load-time ones went into the ``LoadSpec``) and the output constraint
    ``format`` asks for."""
    return CompletionParams(
        prompt=prompt,
        options={k: v for k, v in options.items() if k not in _LOAD_OPTIONS},
        shift=req.shift,
        truncate=req.truncate,
        logprobs=req.logprobs or req.top_logprobs > 0,
        top_logprobs=req.top_logprobs,
        return_tokens=req.endpoint == "generate" and not req.raw,
        grammar=JSON_GRAMMAR if req.format == "json" else None,
        json_schema=req.format if isinstance(req.format, dict) else None,
        images=list(images or []),
    )
