"""``llama-index-llms-ollama`` from PyPI against a real server running SmolLM2: complete, chat and
their streaming forms, compared with the native API's answers."""

from __future__ import annotations

import llama_index.llms.ollama as llama_index_ollama

from tests.compat.conftest import native_chat, native_generate
from tests.conftest import ServerProcess

QUESTION = "What is the capital of France?"
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 16}


def _llm(server: ServerProcess) -> object:
    return llama_index_ollama.Ollama(
        model="smollm2",
        base_url=server.url,
        temperature=0,
        request_timeout=120,
        additional_kwargs={"seed": 1, "num_predict": 16},
    )


def test_complete(smollm2_server: ServerProcess) -> None:
    llm = _llm(smollm2_server)
    answer = llm.complete(QUESTION)  # type: ignore[attr-defined]
    chat = native_chat(
        smollm2_server, model="smollm2", messages=[{"role": "user", "content": QUESTION}], options=OPTIONS
    )
    generate = native_generate(smollm2_server, model="smollm2", prompt=QUESTION, options=OPTIONS)
    # llama-index completes through /api/chat or /api/generate depending on its version: the same
    # ChatML prompt either way, so both native answers agree with it.
    assert chat["message"]["content"] == generate["response"]
    assert answer.text == chat["message"]["content"] != ""
    streamed = [r.delta for r in llm.stream_complete(QUESTION)]  # type: ignore[attr-defined]
    assert "".join(d or "" for d in streamed) == answer.text


def test_chat(smollm2_server: ServerProcess) -> None:
    from llama_index.core.llms import ChatMessage

    llm = _llm(smollm2_server)
    messages = [
        ChatMessage(role="system", content="Always answer in French."),
        ChatMessage(role="user", content=QUESTION),
    ]
    response = llm.chat(messages)  # type: ignore[attr-defined]
    native = native_chat(
        smollm2_server,
        model="smollm2",
        options=OPTIONS,
        messages=[{"role": "system", "content": "Always answer in French."}, {"role": "user", "content": QUESTION}],
    )
    assert response.message.role == "assistant"
    assert response.message.content == native["message"]["content"] != ""
    streamed = list(llm.stream_chat(messages))  # type: ignore[attr-defined]
    assert "".join(r.delta or "" for r in streamed) == response.message.content
    assert streamed[-1].message.content == response.message.content
