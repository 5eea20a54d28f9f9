"""The API adapters stand side by side: the OpenAI and Anthropic routers import neither the Ollama
router nor each other (what they share is in ``pollama.server.common``), and nothing below
``server/`` imports the web framework."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _imported(*modules: str) -> set[str]:
    """The ``pollama`` modules a fresh interpreter has loaded after importing ``modules``."""
    code = (
        f"import sys\nfor m in {list(modules)!r}: __import__(m)\n"
        "import json; print(json.dumps(sorted(n for n in sys.modules if n.startswith(('pollama', 'fastapi', "
        "'starlette')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def _ollama_router(names: set[str]) -> set[str]:
    return {n for n in names if n == "pollama.server.ollama" or n.startswith("pollama.server.ollama.")}


@pytest.mark.parametrize(
    ("adapter", "other"),
    [("pollama.server.openai", "pollama.server.anthropic"), ("pollama.server.anthropic", "pollama.server.openai")],
)
def test_compatibility_routers_do_not_import_other_routers(adapter: str, other: str) -> None:
    names = _imported(adapter)
    assert _ollama_router(names) == set()
    assert not {n for n in names if n == other or n.startswith(other + ".")}
    assert "pollama.server.common" in names


def test_nothing_below_server_imports_the_web_framework() -> None:
    names = _imported(
        "pollama.inference.service", "pollama.template.builder", "pollama.runner.client", "pollama.scheduler"
    )
    assert not {n for n in names if n.startswith(("fastapi", "starlette", "pollama.server"))}
