"""Ollama's native REST API (``/api/...``), one router per concern."""
