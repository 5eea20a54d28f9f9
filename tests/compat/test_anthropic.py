"""The ``anthropic`` SDK from PyPI against a real server running SmolLM2 (spec §3.2).

Sampling options the SDK no longer exposes as arguments (``temperature``) go through ``extra_body``;
the server still reads them. Greedy answers are compared with the native API's.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.compat.conftest import native_chat
from tests.conftest import ServerProcess

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"extra_body": {"temperature": 0}}
NATIVE_GREEDY = {"temperature": 0, "num_predict": 16}

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _use(tool_id: str, city: str) -> dict:
    return {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {"city": city}}],
    }


FEW_SHOT = [
    {"role": "user", "content": "Weather in Paris?"},
    _use("toolu_paris", "Paris"),
    {"role": "user", "content": "Weather in Berlin?"},
    _use("toolu_berlin", "Berlin"),
    {"role": "user", "content": "Weather in London?"},
]


@pytest.fixture(scope="module")
def client(smollm2_server: ServerProcess) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=smollm2_server.url, api_key="ignored", max_retries=0, timeout=120)
    yield c
    c.close()


def test_message_matches_native_chat(client: anthropic.Anthropic, smollm2_server: ServerProcess) -> None:
    m = client.messages.create(model="smollm2", max_tokens=16, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    native = native_chat(smollm2_server, model="smollm2", messages=QUESTION, options=NATIVE_GREEDY)
    assert re.fullmatch(r"msg_[0-9a-f]{24}", m.id)
    assert m.type == "message" and m.role == "assistant" and m.model == "smollm2"
    [block] = m.content
    assert block.type == "text" and block.text == native["message"]["content"] != ""
    assert m.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[native["done_reason"]]
    assert m.usage.output_tokens == native["eval_count"]
    assert m.usage.input_tokens > 0


def test_system_prompt(client: anthropic.Anthropic, smollm2_server: ServerProcess) -> None:
    system = "Always answer in French."
    native = native_chat(
        smollm2_server,
        model="smollm2",
        options=NATIVE_GREEDY,
        messages=[{"role": "system", "content": system}, *QUESTION],
    )
    as_string = client.messages.create(
        model="smollm2",
        max_tokens=16,
        system=system,
        messages=QUESTION,  # type: ignore[arg-type]
        **GREEDY,
    )
    assert as_string.content[0].text == native["message"]["content"]  # type: ignore[union-attr]
    as_blocks = client.messages.create(
        model="smollm2",
        max_tokens=16,
        messages=QUESTION,  # type: ignore[arg-type]
        system=[{"type": "text", "text": "Always answer "}, {"type": "text", "text": "in French."}],
        **GREEDY,
    )
    assert as_blocks.content[0].text == native["message"]["content"]  # type: ignore[union-attr]
    plain = client.messages.create(model="smollm2", max_tokens=16, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    assert plain.content[0].text != native["message"]["content"]  # type: ignore[union-attr]


def test_stop_sequences_and_max_tokens(client: anthropic.Anthropic) -> None:
    full = client.messages.create(model="smollm2", max_tokens=24, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    text = full.content[0].text  # type: ignore[union-attr]
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    cut = client.messages.create(
        model="smollm2",
        max_tokens=24,
        messages=QUESTION,
        stop_sequences=[stop],  # type: ignore[arg-type]
        **GREEDY,
    )
    assert cut.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]
    assert cut.stop_reason == "end_turn"  # Ollama reports a stop sequence as a plain stop
    short = client.messages.create(model="smollm2", max_tokens=3, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_stream_event_sequence(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model="smollm2", max_tokens=16, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    with client.messages.stream(model="smollm2", max_tokens=16, messages=QUESTION, **GREEDY) as stream:  # type: ignore[arg-type]
        events = [
            e
            for e in stream
            if e.type
            in (
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            )
        ]
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0].message  # type: ignore[union-attr]
    assert start.content == [] and start.usage.output_tokens == 0 and start.usage.input_tokens > 0
    assert events[1].content_block.type == "text" and events[1].index == 0  # type: ignore[union-attr]
    assert all(e.delta.type == "text_delta" and e.index == 0 for e in events[2:-3])  # type: ignore[union-attr]
    assert events[-2].delta.stop_reason == whole.stop_reason  # type: ignore[union-attr]
    assert events[-2].usage.output_tokens == whole.usage.output_tokens  # type: ignore[union-attr]
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.id != whole.id and final.id.startswith("msg_")


def test_raw_stream_framing(smollm2_server: ServerProcess) -> None:
    with (
        httpx.Client(base_url=smollm2_server.url, timeout=120) as c,
        c.stream(
            "POST",
            "/v1/messages",
            json={"model": "smollm2", "max_tokens": 4, "stream": True, "messages": QUESTION, "temperature": 0},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        body = r.read().decode()
    frames = [f for f in body.split("\n\n") if f]
    assert all(re.fullmatch(r"event: (\w+)\ndata: \{\"type\":\"\1\".*\}", f, re.S) for f in frames), frames


def test_tool_use_round_trip(client: anthropic.Anthropic, tools_model: str) -> None:
    m = client.messages.create(
        model=tools_model,
        max_tokens=40,
        messages=FEW_SHOT,
        tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
        **GREEDY,
    )
    assert m.stop_reason == "tool_use"
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "London"}  # type: ignore[union-attr]
    assert use.id.startswith("call_")  # type: ignore[union-attr]
    follow = client.messages.create(
        model=tools_model,
        max_tokens=16,
        tools=[WEATHER_TOOL],
        **GREEDY,  # type: ignore[list-item]
        messages=[
            *FEW_SHOT,
            {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,  # type: ignore[union-attr]
                        "content": "Rainy, 12 degrees",
                    }
                ],
            },
        ],
    )
    assert follow.stop_reason in ("end_turn", "max_tokens")
    assert follow.content and follow.content[0].type == "text" and follow.content[0].text


def test_tool_use_streamed(client: anthropic.Anthropic, tools_model: str) -> None:
    with client.messages.stream(
        model=tools_model,
        max_tokens=40,
        messages=FEW_SHOT,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],
        **GREEDY,
    ) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_message()
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"]  # type: ignore[union-attr]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert [d.type for d in deltas] == ["input_json_delta"]
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"city": "London"}  # type: ignore[union-attr]


def test_thinking_dropped_for_models_without_it(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model="smollm2", max_tokens=16, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    thought = client.messages.create(
        model="smollm2",
        max_tokens=16,
        messages=QUESTION,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        **GREEDY,
    )
    assert [b.type for b in thought.content] == ["text"]
    assert thought.content[0].text == plain.content[0].text  # type: ignore[union-attr]


def test_thinking_blocks(client: anthropic.Anthropic, think_model: str, smollm2_server: ServerProcess) -> None:
    question = [{"role": "user", "content": "What is 2+2?"}]
    native = native_chat(
        smollm2_server, model=think_model, messages=question, think=True, options={"temperature": 0, "num_predict": 24}
    )
    m = client.messages.create(
        model=think_model,
        max_tokens=24,
        messages=question,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        **GREEDY,
    )
    assert m.content[0].type == "thinking" and m.content[0].thinking == native["message"]["thinking"] != ""  # type: ignore[union-attr]
    assert "".join(b.text for b in m.content if b.type == "text") == native["message"]["content"]  # type: ignore[union-attr]
    with client.messages.stream(
        model=think_model,
        max_tokens=24,
        messages=question,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        **GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]  # type: ignore[union-attr]
    assert starts[0] == "thinking"
    deltas = [
        e.delta.thinking
        for e in events
        if e.type == "content_block_delta"  # type: ignore[union-attr]
        and e.delta.type == "thinking_delta"
    ]  # type: ignore[union-attr]
    assert "".join(deltas) == native["message"]["thinking"]
    assert final.content[0].thinking == native["message"]["thinking"]  # type: ignore[union-attr]
    off = client.messages.create(
        model=think_model,
        max_tokens=24,
        messages=question,  # type: ignore[arg-type]
        thinking={"type": "disabled"},
        **GREEDY,
    )
    assert [b.type for b in off.content] == ["text"]


def test_content_blocks_and_images(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model="smollm2", max_tokens=16, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    blocks = client.messages.create(
        model="smollm2",
        max_tokens=16,
        **GREEDY,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}],
            }
        ],
    )
    assert blocks.content[0].text == plain.content[0].text  # type: ignore[union-attr]
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(
            model="smollm2",
            max_tokens=16,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
                    ],
                }
            ],
        )
    assert err.value.body["error"]["message"] == "this model is missing data required for image input"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(
            model="smollm2",
            max_tokens=16,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}],
                }
            ],
        )
    assert err.value.body["error"]["message"] == (  # type: ignore[index]
        "invalid image source type: url. Only base64 images are supported."
    )


def test_errors_in_anthropic_shape(client: anthropic.Anthropic, smollm2_server: ServerProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="nope", max_tokens=8, messages=QUESTION)  # type: ignore[arg-type]
    body = err.value.body
    assert body["type"] == "error" and body["error"] == {
        "type": "not_found_error",  # type: ignore[index]
        "message": "model 'nope' not found",
    }
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["request_id"])  # type: ignore[index]
    with httpx.Client(base_url=smollm2_server.url) as c:
        for payload, message in (
            ({"max_tokens": 8, "messages": QUESTION}, "model is required"),
            ({"model": "smollm2", "messages": QUESTION}, "max_tokens is required and must be positive"),
            ({"model": "smollm2", "max_tokens": 8}, "messages is required"),
            (
                {"model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": 3}]},
                "invalid message content type: float64",
            ),
            (
                {
                    "model": "smollm2",
                    "max_tokens": 8,
                    "messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}],
                },
                "tool_use block missing required 'id' field",
            ),
        ):
            r = c.post("/v1/messages", json=payload, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
            assert r.status_code == 400, payload
            assert r.json()["error"] == {"type": "invalid_request_error", "message": message}
