"""OpenAI-compatible API (spec §3.1): ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models`` and ``/v1/responses``, each a translator between OpenAI's shapes and pollama's internal
request/response model; errors are answered in OpenAI's ``{"error": {...}}`` shape."""

from fastapi import APIRouter

from pollama.server.openai import chat, completions, embeddings, models, responses

router = APIRouter()
for _module in (chat, completions, embeddings, models, responses):
    router.include_router(_module.router)

__all__ = ["router"]
