"""The ``openai`` SDK from PyPI against a real server running SmolLM2 (spec §3.1).

Greedy decoding (temperature 0) makes answers deterministic, so OpenAI-side values are compared with
what the native API answers for the same request.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Literal

import httpx
import openai
import pytest
import zstandard
from pydantic import BaseModel

from tests.compat.conftest import native_chat, native_generate
from tests.conftest import ServerProcess, free_port

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 16, "seed": 1}
NATIVE_GREEDY = {"temperature": 0, "num_predict": 16, "seed": 1, "top_p": 1.0}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call(call_id: str, city: str) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
            }
        ],
    }


# Two worked examples make the 135M model answer the third question with a <tool_call> (greedy).
FEW_SHOT = [
    {"role": "user", "content": "Weather in Paris?"},
    _call("call_paris", "Paris"),
    {"role": "user", "content": "Weather in Berlin?"},
    _call("call_berlin", "Berlin"),
    {"role": "user", "content": "Weather in London?"},
]


def _message(error: openai.APIStatusError) -> str:
    """The ``error.message`` the server sent (the SDK prefixes its own text to ``.message``)."""
    body = error.body
    assert isinstance(body, dict), body
    return str(body["message"])


@pytest.fixture(scope="module")
def client(smollm2_server: ServerProcess) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="ignored", max_retries=0, timeout=120)
    yield c
    c.close()


def test_chat_matches_native_chat(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    native = native_chat(smollm2_server, model="smollm2", messages=QUESTION, options=NATIVE_GREEDY)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == native["message"]["content"] != ""
    assert choice.finish_reason == native["done_reason"]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "smollm2" and r.system_fingerprint == "fp_ollama"
    assert r.usage is not None
    assert r.usage.completion_tokens == native["eval_count"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens > 0


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="smollm2", messages=QUESTION, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="smollm2", messages=QUESTION, stream=True, **GREEDY))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)


def test_stream_helper_accumulates(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    with client.chat.completions.stream(model="smollm2", messages=QUESTION, **GREEDY) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == whole.choices[0].message.content


def test_stop_and_max_tokens(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    text = full.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    cut = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24, stop=stop)
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3  # type: ignore[union-attr]
    newer = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_completion_tokens=3)
    assert newer.choices[0].message.content == short.choices[0].message.content


def test_seed_reproducible_sampling(client: openai.OpenAI) -> None:
    kwargs = {"model": "smollm2", "messages": QUESTION, "temperature": 1.0, "max_tokens": 16}
    a = client.chat.completions.create(seed=42, **kwargs).choices[0].message.content  # type: ignore[arg-type]
    b = client.chat.completions.create(seed=42, **kwargs).choices[0].message.content  # type: ignore[arg-type]
    assert a == b


def test_sampling_defaults_and_penalties(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    # temperature and top_p default to 1.0 (spec §3.1), not to the model's defaults: with a fixed seed
    # the sample equals native sampling at temperature 1.0 and top_p 1.0.
    sampled = client.chat.completions.create(model="smollm2", messages=QUESTION, seed=7, max_tokens=16)
    native = native_chat(
        smollm2_server,
        model="smollm2",
        messages=QUESTION,
        options={"temperature": 1.0, "top_p": 1.0, "seed": 7, "num_predict": 16},
    )
    assert sampled.choices[0].message.content == native["message"]["content"]
    question = [{"role": "user", "content": "List the days of the week."}]
    penalised = client.chat.completions.create(
        model="smollm2", messages=question, temperature=0, max_tokens=32, frequency_penalty=1.5, presence_penalty=1.0
    )
    native = native_chat(
        smollm2_server,
        model="smollm2",
        messages=question,
        options={"temperature": 0, "top_p": 1.0, "num_predict": 32, "frequency_penalty": 1.5, "presence_penalty": 1.0},
    )
    assert penalised.choices[0].message.content == native["message"]["content"]
    plain = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=32)
    assert plain.choices[0].message.content != penalised.choices[0].message.content


def test_json_object_response_format(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=48,
    )
    content = r.choices[0].message.content or ""
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still a JSON object's beginning
        assert content.lstrip().startswith("{")


class Capital(BaseModel):
    city: Literal["Paris", "London", "Berlin"]
    is_capital: bool


def test_parse_with_pydantic_model(client: openai.OpenAI) -> None:
    completions = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = completions(model="smollm2", messages=QUESTION, response_format=Capital, temperature=0, max_tokens=40)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Capital)
    assert parsed == Capital.model_validate_json(r.choices[0].message.content or "")
    assert parsed.city == "Paris"


def test_tools_round_trip(client: openai.OpenAI, tools_model: str, smollm2_server: ServerProcess) -> None:
    r = client.chat.completions.create(
        model=tools_model,
        messages=FEW_SHOT,
        tools=[WEATHER_TOOL],  # type: ignore[arg-type]
        temperature=0,
        max_tokens=40,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) == len("call_") + 8
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "London"}
    assert choice.message.content == ""

    # The same conversation through the native API gives the same call.
    native_messages = [
        {
            "role": m["role"],
            "content": m["content"] or "",
            **(
                {
                    "tool_calls": [
                        {
                            "function": {
                                "name": "get_weather",
                                "arguments": json.loads(m["tool_calls"][0]["function"]["arguments"]),
                            }
                        }
                    ]
                }
                if m.get("tool_calls")
                else {}
            ),
        }
        for m in FEW_SHOT
    ]
    native = native_chat(
        smollm2_server,
        model=tools_model,
        messages=native_messages,
        tools=[WEATHER_TOOL],
        options={"temperature": 0, "num_predict": 40},
    )
    assert native["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "London"}

    # Send the result back: the tool message names its call only by id; the answer is text.
    follow = client.chat.completions.create(
        model=tools_model,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=16,  # type: ignore[list-item]
        messages=[
            *FEW_SHOT,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "Rainy, 12 degrees"},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert follow.choices[0].message.content


def test_tools_streamed_in_deltas(client: openai.OpenAI, tools_model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=tools_model,
            messages=FEW_SHOT,
            tools=[WEATHER_TOOL],  # type: ignore[arg-type]
            temperature=0,
            max_tokens=40,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1
    assert calls[0].index == 0 and calls[0].id and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "London"}  # type: ignore[union-attr, arg-type]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_sends_no_tools(client: openai.OpenAI) -> None:
    # smollm2's template has no .Tools: tools alone are refused, tool_choice "none" drops them.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=QUESTION, tools=[WEATHER_TOOL], **GREEDY)  # type: ignore[list-item]
    assert "does not support tools" in _message(err.value)
    r = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        **GREEDY,
    )
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    assert r.choices[0].message.content == plain.choices[0].message.content


def test_content_parts_and_images(client: openai.OpenAI) -> None:
    parts = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}],
        **GREEDY,
    )
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    with pytest.raises(openai.BadRequestError) as err:  # decoded fine; smollm2 has no vision
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": [image]}], **GREEDY)
    assert _message(err.value) == "this model is missing data required for image input"
    # An image URL is fetched by the server; one it cannot reach is a 400 that names it.
    unreachable = f"http://127.0.0.1:{free_port()}/cat.png"
    remote = {"type": "image_url", "image_url": {"url": unreachable}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": [remote]}], **GREEDY)
    assert _message(err.value).startswith(f"invalid image input: failed to fetch image URL {unreachable}: ")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="smollm2",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}
            ],
            **GREEDY,
        )
    assert _message(err.value) == "invalid image input"


def test_reasoning_effort(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    off = client.chat.completions.create(model="smollm2", messages=QUESTION, reasoning_effort="none", **GREEDY)
    assert off.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=QUESTION, reasoning_effort="high", **GREEDY)
    assert _message(err.value).endswith('" does not support thinking')
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=QUESTION, reasoning_effort="huge", **GREEDY)  # type: ignore[arg-type]
    assert _message(err.value).startswith('invalid reasoning value: "huge"')


def test_reasoning_from_a_thinking_model(
    client: openai.OpenAI, think_model: str, smollm2_server: ServerProcess
) -> None:
    question = [{"role": "user", "content": "What is 2+2?"}]
    native = native_chat(
        smollm2_server,
        model=think_model,
        messages=question,
        think="high",
        options={"temperature": 0, "num_predict": 24},
    )
    thinking = native["message"]["thinking"]
    assert thinking
    r = client.chat.completions.create(
        model=think_model,
        messages=question,
        reasoning_effort="high",  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
    )
    message = r.choices[0].message
    assert message.reasoning == thinking  # type: ignore[attr-defined]
    assert message.content == native["message"]["content"]
    chunks = list(
        client.chat.completions.create(
            model=think_model,
            messages=question,
            reasoning_effort="low",  # type: ignore[arg-type]
            temperature=0,
            max_tokens=24,
            stream=True,
        )
    )
    assert "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices) == thinking
    off = client.chat.completions.create(
        model=think_model,
        messages=question,
        reasoning_effort="none",  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
    )
    unthought = native_chat(
        smollm2_server, model=think_model, messages=question, think=False, options={"temperature": 0, "num_predict": 24}
    )
    assert off.choices[0].message.content == unthought["message"]["content"] != ""
    assert getattr(off.choices[0].message, "reasoning", None) is None


def test_errors_in_openai_shape(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert err.value.status_code == 404
    assert err.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=[])
    assert _message(bad.value) == "[] is too short - 'messages'"
    with httpx.Client(base_url=smollm2_server.url) as c:
        r = c.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user"}]})
        assert r.status_code == 400 and r.json()["error"]["message"] == "invalid message content type: <nil>"


def test_logprobs_match_native(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, logprobs=True, top_logprobs=2, **GREEDY)
    native = native_chat(
        smollm2_server, model="smollm2", messages=QUESTION, options=NATIVE_GREEDY, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == len(native["logprobs"]) == r.usage.completion_tokens  # type: ignore[union-attr]
    for mine, theirs in zip(content, native["logprobs"], strict=True):
        assert mine.token == theirs["token"] and mine.logprob == pytest.approx(theirs["logprob"], abs=1e-4)
        assert [t.token for t in mine.top_logprobs] == [t["token"] for t in theirs["top_logprobs"]]
        assert mine.logprob <= 0 and len(mine.top_logprobs) == 2
    # Greedy: every chosen token is the most likely one.
    assert all(t.token == t.top_logprobs[0].token for t in content)
    assert "".join(t.token for t in content) == r.choices[0].message.content
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    assert plain.choices[0].logprobs is None
    streamed = [
        c
        for c in client.chat.completions.create(
            model="smollm2", messages=QUESTION, logprobs=True, stream=True, **GREEDY
        )
        if c.choices
    ]
    tokens = [t.token for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert tokens == [t.token for t in content]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=QUESTION, logprobs=True, top_logprobs=21, **GREEDY)
    assert _message(err.value) == "top_logprobs must be between 0 and 20"


def test_completions_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smollm2", prompt="The capital of France is", logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs or []) == len(lp.tokens) == len(lp.top_logprobs or []) == len(lp.text_offset or [])
    assert all(len(top) <= 2 for top in lp.top_logprobs or [])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_embeddings_float_and_base64(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    with httpx.Client(base_url=smollm2_server.url, timeout=120) as c:
        native = c.post("/api/embed", json={"model": "smollm2", "input": ["hello world", "bye"]}).json()
    floats = client.embeddings.create(model="smollm2", input=["hello world", "bye"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == "smollm2"
    for mine, theirs in zip(floats.data, native["embeddings"], strict=True):
        assert mine.embedding == pytest.approx(theirs, abs=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == native["prompt_eval_count"]
    # The SDK asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model="smollm2", input=["hello world", "bye"])
    for mine, theirs in zip(default.data, native["embeddings"], strict=True):
        assert mine.embedding == pytest.approx(theirs, abs=1e-6)
    with httpx.Client(base_url=smollm2_server.url, timeout=120) as c:
        raw = c.post("/v1/embeddings", json={"model": "smollm2", "input": "bye", "encoding_format": "base64"}).json()
    data = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(data) // 4}f", data)
    assert list(decoded) == pytest.approx(native["embeddings"][1], abs=1e-6)
    short = client.embeddings.create(model="smollm2", input="hello world", dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8
    assert math.sqrt(sum(v * v for v in short.data[0].embedding)) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="smollm2", input=[], encoding_format="float")
    assert _message(err.value) == "invalid input"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="smollm2", input="x", encoding_format="int8")  # type: ignore[arg-type]
    assert _message(err.value) == "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."


def test_models_list_and_retrieve(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    with httpx.Client(base_url=smollm2_server.url) as c:
        tags = c.get("/api/tags").json()["models"]
    models = list(client.models.list())
    assert [m.id for m in models] == [t["name"] for t in tags]
    smol = next(m for m in models if m.id == "smollm2:latest")
    assert smol.object == "model" and smol.owned_by == "library" and smol.created > 0
    one = client.models.retrieve("smollm2")
    assert one.id == "smollm2" and one.owned_by == "library" and one.created == smol.created
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("missing-model")
    assert _message(err.value) == "model 'missing-model' not found"


def test_completions_match_native_generate(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model="smollm2", prompt=prompt, **GREEDY)
    native = native_generate(smollm2_server, model="smollm2", prompt=prompt, options=NATIVE_GREEDY)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == native["response"] != ""
    assert r.choices[0].finish_reason == native["done_reason"]
    assert r.usage.completion_tokens == native["eval_count"]  # type: ignore[union-attr]
    chunks = list(
        client.completions.create(
            model="smollm2", prompt=prompt, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == native["response"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == native["eval_count"]  # type: ignore[union-attr]
    assert chunks[-2].choices[0].finish_reason == native["done_reason"]


def test_completions_stop_type_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2", prompt="x", stop=[1], max_tokens=2)  # type: ignore[list-item]
    assert _message(err.value) == "invalid type for 'stop' field: float64"


def test_responses_match_chat(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="smollm2", messages=QUESTION, **GREEDY)
    r = client.responses.create(
        model="smollm2", input="What is the capital of France?", temperature=0, max_output_tokens=16, top_p=1.0
    )
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == chat.choices[0].message.content
    assert r.output[0].type == "message" and r.output[0].role == "assistant"  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.output_tokens == chat.usage.completion_tokens  # type: ignore[union-attr]
    assert r.temperature == 0 and r.max_output_tokens == 16

    items = client.responses.create(
        model="smollm2",
        temperature=0,
        max_output_tokens=16,
        top_p=1.0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the capital of France?"}]}],
    )
    assert items.output_text == r.output_text


def test_responses_stream_events(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="smollm2", input="Say hello.", temperature=0, max_output_tokens=12)
    events = list(
        client.responses.create(model="smollm2", input="Say hello.", temperature=0, max_output_tokens=12, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == whole.output_text
    assert events[-1].response.output_text == whole.output_text  # type: ignore[union-attr]


def test_responses_reasoning_items(client: openai.OpenAI, think_model: str, smollm2_server: ServerProcess) -> None:
    native = native_chat(
        smollm2_server,
        model=think_model,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        think="medium",
        options={"temperature": 0, "num_predict": 24},
    )
    r = client.responses.create(
        model=think_model, input="What is 2+2?", reasoning={"effort": "medium"}, temperature=0, max_output_tokens=24
    )
    reasoning = r.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.summary[0].text == native["message"]["thinking"]  # type: ignore[union-attr]
    assert r.output[1].type == "message" and r.output_text == native["message"]["content"]
    assert r.reasoning is not None and r.reasoning.effort == "medium"
    events = list(
        client.responses.create(
            model=think_model,
            input="What is 2+2?",
            reasoning={"effort": "medium"},
            temperature=0,
            max_output_tokens=24,
            stream=True,
        )
    )
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]  # type: ignore[union-attr]
    assert "".join(deltas) == native["message"]["thinking"]
    [done] = [e for e in events if e.type == "response.reasoning_summary_text.done"]
    assert done.text == native["message"]["thinking"]  # type: ignore[union-attr]


def test_responses_function_calls(client: openai.OpenAI, tools_model: str) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Get the weather in a city",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }  # type: ignore[index]
    history: list = []
    for i, city in enumerate(("Paris", "Berlin")):
        history += [
            {"role": "user", "content": f"Weather in {city}?"},
            {
                "type": "function_call",
                "call_id": f"call_{i}",
                "name": "get_weather",
                "arguments": json.dumps({"city": city}),
            },
        ]
    history.append({"role": "user", "content": "Weather in London?"})
    r = client.responses.create(
        model=tools_model,
        input=history,
        tools=[tool],
        temperature=0,  # type: ignore[list-item]
        max_output_tokens=40,
    )
    [call] = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "London"}  # type: ignore[union-attr]
    follow = client.responses.create(
        model=tools_model,
        tools=[tool],
        temperature=0,
        max_output_tokens=16,  # type: ignore[list-item]
        input=[
            *history,
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,  # type: ignore[union-attr]
                "arguments": call.arguments,
            },  # type: ignore[union-attr]
            {"type": "function_call_output", "call_id": call.call_id, "output": "Rainy"},
        ],
    )  # type: ignore[union-attr]
    assert follow.output_text


def test_responses_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="smollm2", input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]
        )
    assert _message(err.value) == "file inputs are not currently supported"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")


def test_responses_zstd_body(client: openai.OpenAI, smollm2_server: ServerProcess) -> None:
    body = {"model": "smollm2", "input": "Say hello.", "temperature": 0, "max_output_tokens": 8}
    plain = client.responses.create(**body)  # type: ignore[arg-type]
    packed = zstandard.ZstdCompressor().compress(json.dumps(body).encode())
    with httpx.Client(base_url=smollm2_server.url, timeout=120) as c:
        r = c.post(
            "/v1/responses", content=packed, headers={"Content-Encoding": "zstd", "Content-Type": "application/json"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["output"][0]["content"][0]["text"] == plain.output_text
        r = c.post("/v1/responses", content=b"not zstd", headers={"Content-Encoding": "zstd"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid zstd request body")
