"""The official ``ollama`` Python client from PyPI against a real server running SmolLM2.

Values are checked against raw ``httpx`` calls of the same greedy requests, so a client-side parse
that silently dropped or renamed a field would show.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import ollama
import pytest
from pydantic import BaseModel

from tests.compat.conftest import native_chat, native_generate
from tests.conftest import CHATML_TEMPLATE, ServerProcess

GREEDY = {"temperature": 0, "num_predict": 16, "seed": 1}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smollm2_server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=smollm2_server.url, timeout=120)


def test_generate(client: ollama.Client, smollm2_server: ServerProcess) -> None:
    r = client.generate(model="smollm2", prompt="Why is the sky blue?", options=GREEDY)
    raw = native_generate(smollm2_server, model="smollm2", prompt="Why is the sky blue?", options=GREEDY)
    assert r.model == "smollm2" and r.done is True
    assert r.response == raw["response"] != ""
    assert r.done_reason == raw["done_reason"]
    assert r.eval_count == raw["eval_count"] and r.context == raw["context"]
    assert r.total_duration and r.total_duration >= (r.eval_duration or 0) > 0


def test_generate_stream(client: ollama.Client) -> None:
    whole = client.generate(model="smollm2", prompt="Why is the sky blue?", options=GREEDY)
    parts = list(client.generate(model="smollm2", prompt="Why is the sky blue?", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count


def test_chat_and_stream(client: ollama.Client, smollm2_server: ServerProcess) -> None:
    r = client.chat(model="smollm2", messages=QUESTION, options=GREEDY)
    raw = native_chat(smollm2_server, model="smollm2", messages=QUESTION, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content == raw["message"]["content"] != ""
    assert r.eval_count == raw["eval_count"] and r.done_reason == raw["done_reason"]
    parts = list(client.chat(model="smollm2", messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in parts) == r.message.content
    assert parts[-1].done and parts[-1].done_reason == r.done_reason


class Country(BaseModel):
    capital: Literal["Paris", "London", "Berlin"]
    is_in_europe: bool


def test_format_with_pydantic_schema(client: ollama.Client) -> None:
    r = client.chat(
        model="smollm2",
        messages=QUESTION,
        format=Country.model_json_schema(),
        options={"temperature": 0, "num_predict": 40},
    )
    country = Country.model_validate_json(r.message.content or "")
    assert country.capital == "Paris"
    g = client.generate(
        model="smollm2",
        prompt="What is the capital of France? Answer in JSON.",
        format="json",
        options={"temperature": 0, "num_predict": 40},
    )
    assert g.response.lstrip().startswith("{")


def test_tool_calls_parsed_by_client(client: ollama.Client, tools_model: str) -> None:
    def get_weather(city: str) -> str:
        """Get the weather in a city.

        Args:
            city: The city
        """
        return "sunny"

    history = []
    for city in ("Paris", "Berlin"):
        history += [
            {"role": "user", "content": f"Weather in {city}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city}}}],
            },
        ]
    history.append({"role": "user", "content": "Weather in London?"})
    r = client.chat(
        model=tools_model, messages=history, tools=[get_weather], options={"temperature": 0, "num_predict": 40}
    )
    [call] = r.message.tool_calls or []
    assert call.function.name == "get_weather" and dict(call.function.arguments) == {"city": "London"}
    result = get_weather(**call.function.arguments)
    follow = client.chat(
        model=tools_model,
        tools=[get_weather],
        options={"temperature": 0, "num_predict": 16},
        messages=[*history, r.message, {"role": "tool", "content": result, "tool_name": "get_weather"}],
    )
    assert follow.message.content and not follow.message.tool_calls


def test_embed(client: ollama.Client, smollm2_server: ServerProcess) -> None:
    r = client.embed(model="smollm2", input=["hello world", "bye"])
    with httpx.Client(base_url=smollm2_server.url, timeout=120) as c:
        raw = c.post("/api/embed", json={"model": "smollm2", "input": ["hello world", "bye"]}).json()
    assert r.model == "smollm2" and len(r.embeddings) == 2
    assert [list(v) for v in r.embeddings] == raw["embeddings"]
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-5) for v in r.embeddings)
    assert r.prompt_eval_count == raw["prompt_eval_count"] > 0
    single = client.embed(model="smollm2", input="bye")
    assert list(single.embeddings[0]) == pytest.approx(raw["embeddings"][1], abs=1e-6)


def test_list_show(client: ollama.Client, smollm2_server: ServerProcess) -> None:
    with httpx.Client(base_url=smollm2_server.url) as c:
        tags = c.get("/api/tags").json()["models"]
    listed = client.list().models
    assert [m.model for m in listed] == [t["model"] for t in tags]
    smol = next(m for m in listed if m.model == "smollm2:latest")
    tag = next(t for t in tags if t["model"] == "smollm2:latest")
    assert smol.digest == tag["digest"] and smol.size == tag["size"] > 0
    assert smol.details is not None and smol.details.family == tag["details"]["family"] == "llama"
    assert smol.details.quantization_level == tag["details"]["quantization_level"]
    shown = client.show("smollm2")
    assert shown.template == CHATML_TEMPLATE
    assert "completion" in (shown.capabilities or [])
    assert shown.modelfile and "TEMPLATE" in shown.modelfile and "<|im_end|>" in (shown.parameters or "")
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    with pytest.raises(ollama.ResponseError) as err:
        client.show("missing-model")
    assert err.value.status_code == 404 and err.value.error == "model 'missing-model' not found"


def test_create_copy_delete(client: ollama.Client) -> None:
    progress = list(
        client.create(
            model="terse", from_="smollm2", system="Answer in one word.", parameters={"temperature": 0.2}, stream=True
        )
    )
    assert progress[-1].status == "success"
    shown = client.show("terse")
    assert any(
        line.startswith("SYSTEM") and "Answer in one word." in line for line in (shown.modelfile or "").splitlines()
    )
    assert "temperature" in (shown.parameters or "")
    assert client.copy("terse", "terse-copy").status == "success"
    names = [m.model for m in client.list().models]
    assert "terse:latest" in names and "terse-copy:latest" in names
    assert client.delete("terse-copy").status == "success"
    assert client.delete("terse").status == "success"
    names = [m.model for m in client.list().models]
    assert "terse:latest" not in names and "terse-copy:latest" not in names
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("terse")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("not-there", "elsewhere")
    assert err.value.status_code == 404


def test_ps(client: ollama.Client) -> None:
    client.generate(model="smollm2", prompt="hi", options={"num_predict": 1}, keep_alive="10m")
    running = {m.model: m for m in client.ps().models}
    smol = running["smollm2:latest"]
    assert smol.size and smol.size > 0 and smol.digest
    assert smol.context_length == 2048
    assert smol.expires_at is not None and smol.expires_at.timestamp() > time.time() + 60
    client.generate(model="smollm2", prompt="", keep_alive=0)  # unload
    deadline = time.monotonic() + 10
    while "smollm2:latest" in {m.model for m in client.ps().models} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "smollm2:latest" not in {m.model for m in client.ps().models}


def test_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="missing-model", messages=QUESTION)
    assert err.value.status_code == 404 and "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        list(client.generate(model="missing-model", prompt="x", stream=True))
    assert err.value.status_code == 404


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[object]:
    """A local docker-registry (installed by scripts/test) to pull from and push to."""
    assert shutil.which("docker-registry") or Path("/usr/bin/docker-registry").exists(), (
        "docker-registry is missing (scripts/test installs it)"
    )
    from tests.registry.conftest import DockerRegistry

    reg = DockerRegistry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


def test_push_and_pull(client: ollama.Client, registry: object) -> None:
    name = f"{registry.host}/library/smol-roundtrip:latest"  # type: ignore[attr-defined]
    client.copy("smollm2", name)
    pushed = list(client.push(name, insecure=True, stream=True))
    assert pushed[-1].status == "success"
    digest = next(m.digest for m in client.list().models if m.model == name)
    client.delete(name)
    assert name not in [m.model for m in client.list().models]
    pulled = list(client.pull(name, insecure=True, stream=True))
    assert pulled[-1].status == "success"
    assert {"pulling manifest", "verifying sha256 digest", "writing manifest"} <= {p.status for p in pulled}
    assert next(m.digest for m in client.list().models if m.model == name) == digest
    a = client.generate(model=name, prompt="Why is the sky blue?", options=GREEDY).response
    b = client.generate(model="smollm2", prompt="Why is the sky blue?", options=GREEDY).response
    assert a == b
    client.delete(name)
