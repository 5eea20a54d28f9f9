"""Anthropic-compatible API (spec §3.2): ``POST /v1/messages`` translated to and from pollama's internal
request/response model; errors in Anthropic's ``{"type": "error", ...}`` shape."""

from pollama.server.anthropic.messages import router

__all__ = ["router"]
