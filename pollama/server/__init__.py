"""HTTP only: the app factory (``app.py``), Ollama's routers (``ollama/``), wire helpers and the
single mapping from domain errors to status codes (``errors.py``)."""
