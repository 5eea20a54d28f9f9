"""pollama: Ollama's API, model store, CLI and Modelfiles in Python, running GGUF models on llama.cpp."""

__version__ = "0.1.0"

# The Ollama release whose API pollama speaks; reported by /api/version so that clients which gate
# features on the server's version treat pollama as that release.
OLLAMA_VERSION = "0.33.0"
