"""``langchain-ollama`` from PyPI against a real server running SmolLM2: ChatOllama (invoke, stream,
structured output) and OllamaEmbeddings, compared with the native API's answers."""

from __future__ import annotations

import math
from typing import Literal

import httpx
import langchain_ollama
import pytest
from pydantic import BaseModel

from tests.compat.conftest import native_chat
from tests.conftest import ServerProcess

QUESTION = "What is the capital of France?"


def _chat(server: ServerProcess, **kwargs: object) -> object:
    return langchain_ollama.ChatOllama(model="smollm2", base_url=server.url, temperature=0, seed=1, **kwargs)


def test_invoke_matches_native(smollm2_server: ServerProcess) -> None:
    message = _chat(smollm2_server, num_predict=16).invoke(QUESTION)  # type: ignore[attr-defined]
    native = native_chat(
        smollm2_server,
        model="smollm2",
        messages=[{"role": "user", "content": QUESTION}],
        options={"temperature": 0, "seed": 1, "num_predict": 16},
    )
    assert message.content == native["message"]["content"] != ""
    assert message.response_metadata["done_reason"] == native["done_reason"]
    assert message.usage_metadata["output_tokens"] == native["eval_count"]
    assert message.usage_metadata["total_tokens"] == (
        message.usage_metadata["input_tokens"] + message.usage_metadata["output_tokens"]
    )


def test_system_and_history(smollm2_server: ServerProcess) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    history = [
        SystemMessage("Always answer in French."),
        HumanMessage("Hello"),
        AIMessage("Bonjour !"),
        HumanMessage(QUESTION),
    ]
    message = _chat(smollm2_server, num_predict=16).invoke(history)  # type: ignore[attr-defined]
    native = native_chat(
        smollm2_server,
        model="smollm2",
        options={"temperature": 0, "seed": 1, "num_predict": 16},
        messages=[
            {"role": "system", "content": "Always answer in French."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Bonjour !"},
            {"role": "user", "content": QUESTION},
        ],
    )
    assert message.content == native["message"]["content"]


def test_stream(smollm2_server: ServerProcess) -> None:
    chat = _chat(smollm2_server, num_predict=16)
    whole = chat.invoke(QUESTION).content  # type: ignore[attr-defined]
    pieces = [chunk.content for chunk in chat.stream(QUESTION)]  # type: ignore[attr-defined]
    assert len([p for p in pieces if p]) > 2
    assert "".join(pieces) == whole


class Country(BaseModel):
    capital: Literal["Paris", "London", "Berlin"]
    is_in_europe: bool


def test_with_structured_output(smollm2_server: ServerProcess) -> None:
    structured = _chat(smollm2_server, num_predict=40).with_structured_output(Country)  # type: ignore[attr-defined]
    answer = structured.invoke(QUESTION)
    assert isinstance(answer, Country) and answer.capital == "Paris"
    as_json = (
        _chat(smollm2_server, num_predict=40)
        .with_structured_output(  # type: ignore[attr-defined]
            Country.model_json_schema(), method="json_schema"
        )
        .invoke(QUESTION)
    )
    assert Country.model_validate(as_json) == answer


def test_embeddings(smollm2_server: ServerProcess) -> None:
    embeddings = langchain_ollama.OllamaEmbeddings(model="smollm2", base_url=smollm2_server.url)
    docs = embeddings.embed_documents(["hello world", "bye"])
    query = embeddings.embed_query("bye")
    with httpx.Client(base_url=smollm2_server.url, timeout=120) as c:
        native = c.post("/api/embed", json={"model": "smollm2", "input": ["hello world", "bye"]}).json()
    assert docs == native["embeddings"]
    assert query == pytest.approx(native["embeddings"][1], abs=1e-6)
    assert math.isclose(math.sqrt(sum(v * v for v in query)), 1.0, abs_tol=1e-5)
