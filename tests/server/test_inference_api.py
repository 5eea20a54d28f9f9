"""/api/generate, /api/chat, /api/embed, /api/ps against a real server running SmolLM2 on llama.cpp."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess

GREEDY = {"temperature": 0, "num_predict": 24, "seed": 1}


def generate(c: httpx.Client, **body: object) -> dict:
    r = c.post("/api/generate", json={"model": "smollm2", "stream": False, **body})
    assert r.status_code == 200, r.text
    return r.json()


def chat(c: httpx.Client, messages: list[dict], **body: object) -> dict:
    r = c.post("/api/chat", json={"model": "smollm2", "messages": messages, "stream": False, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_raw_greedy_matches_llama_cpp(smollm2_server: ServerProcess, smollm2_gguf: Path) -> None:
    prompt = "The capital of France is"
    with smollm2_server.client() as c:
        ours = generate(c, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 16})
    from llama_cpp import Llama

    # The runner leaves flash attention to llama.cpp's "auto", which turns it on for this model on the CPU;
    # llama-cpp-python's Llama defaults to off. Attention sums in another order, so compare like with like.
    llm = Llama(model_path=str(smollm2_gguf), n_ctx=512, verbose=False, seed=1, flash_attn=True)
    theirs = llm.create_completion(prompt, max_tokens=16, temperature=0, repeat_penalty=1.0, top_k=40, top_p=0.9)
    llm.close()
    assert ours["response"] == theirs["choices"][0]["text"]
    assert ours["done_reason"] == "length" and ours["eval_count"] == 16
    assert "context" not in ours


def test_generate_stream_shape_and_stats(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        lines = []
        with c.stream("POST", "/api/generate", json={"model": "smollm2", "prompt": "Say hi.", "options": GREEDY}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            for line in r.iter_lines():
                lines.append(json.loads(line))
    assert len(lines) > 2
    assert all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["response"] == ""
    assert final["done_reason"] in ("stop", "length")
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration", "context"):
        assert key in final, key
    assert final["eval_count"] == len(lines) - 1 or final["eval_count"] >= len(lines) - 1
    assert final["total_duration"] >= final["eval_duration"] > 0
    assert isinstance(final["context"], list) and len(final["context"]) > final["prompt_eval_count"] - 1


def test_seed_makes_sampling_reproducible(smollm2_server: ServerProcess) -> None:
    opts = {"temperature": 1.0, "seed": 1234, "num_predict": 20}
    with smollm2_server.client() as c:
        a = generate(c, prompt="Tell me a story.", options=opts)["response"]
        b = generate(c, prompt="Tell me a story.", options=opts)["response"]
        d = generate(c, prompt="Tell me a story.", options={**opts, "seed": 99})["response"]
    assert a == b
    assert a != d


def test_stop_string_and_num_predict(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        full = generate(c, prompt="Count from 1 to 10 separated by commas.", options={**GREEDY, "num_predict": 30})
        text = full["response"]
        assert "3" in text, text
        cut = text.index("3")
        stopped = generate(
            c, prompt="Count from 1 to 10 separated by commas.", options={**GREEDY, "num_predict": 30, "stop": ["3"]}
        )
        assert stopped["response"] == text[:cut]
        assert stopped["done_reason"] == "stop"
        short = generate(c, prompt="Count from 1 to 10 separated by commas.", options={**GREEDY, "num_predict": 3})
        assert short["done_reason"] == "length" and short["eval_count"] == 3


def test_json_schema_format(smollm2_server: ServerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    with smollm2_server.client() as c:
        out = chat(
            c,
            [{"role": "user", "content": "Invent a person. Reply in JSON."}],
            format=schema,
            options={"temperature": 0, "num_predict": 64},
        )
    data = json.loads(out["message"]["content"])
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_json_format(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        out = chat(
            c,
            [{"role": "user", "content": 'Reply with a JSON object with key "answer" and value "yes".'}],
            format="json",
            options={"temperature": 0, "num_predict": 128},
        )
    assert json.loads(out["message"]["content"]) == {"answer": "yes"}
    assert out["done_reason"] == "stop"


def test_concurrent_greedy_streams_match_solo(smollm2_server: ServerProcess) -> None:
    prompts = ["Why is the sky blue?", "Name a fruit.", "What is 2+2?", "Write a haiku about rain."]
    with smollm2_server.client() as c:
        solo = [chat(c, [{"role": "user", "content": p}], options=GREEDY)["message"]["content"] for p in prompts]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        with smollm2_server.client() as c:
            results[i] = chat(c, [{"role": "user", "content": prompts[i]}], options=GREEDY)["message"]["content"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == solo


def test_second_turn_reuses_prefix(smollm2_server: ServerProcess) -> None:
    history = [
        {"role": "system", "content": "You are a helpful assistant. " * 20},
        {"role": "user", "content": "What is the capital of Italy?"},
    ]
    with smollm2_server.client() as c:
        first = chat(c, history, options=GREEDY)
        history += [first["message"], {"role": "user", "content": "And of Spain?"}]
        second = chat(c, history, options=GREEDY)
    assert first["prompt_eval_count"] > 100
    assert second["prompt_eval_count"] > first["prompt_eval_count"]
    # Only the new turn is evaluated (the rest comes from the slot's KV cache), so the longer second
    # prompt takes far less time to evaluate than the first.
    first_rate = first["prompt_eval_duration"] / first["prompt_eval_count"]
    second_rate = second["prompt_eval_duration"] / second["prompt_eval_count"]
    assert second_rate < first_rate / 2


def test_chat_stop_tokens_not_emitted(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        out = chat(
            c,
            [{"role": "user", "content": "What is 2+2? Answer with just the number."}],
            options={"temperature": 0, "num_predict": 64},
        )
    assert out["done_reason"] == "stop"
    assert out["message"]["content"] == "2 + 2 = 4"
    assert "<|im_end|>" not in out["message"]["content"] and out["message"]["content"]
    assert out["message"]["role"] == "assistant"


def test_load_unload_and_ps(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        r = c.post("/api/generate", json={"model": "smollm2"})
        assert r.status_code == 200
        body = r.json()
        assert (body["done"], body["done_reason"], body["response"]) == (True, "load", "")
        ps = c.get("/api/ps").json()["models"]
        assert [m["name"] for m in ps] == ["smollm2:latest"]
        assert ps[0]["context_length"] == 2048 and ps[0]["size"] > 50_000_000
        r = c.post("/api/chat", json={"model": "smollm2", "messages": [], "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert r.json()["message"] == {"role": "assistant", "content": ""}
        deadline = time.time() + 10
        while c.get("/api/ps").json()["models"] and time.time() < deadline:
            time.sleep(0.1)
        assert c.get("/api/ps").json()["models"] == []


def test_errors(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        r = c.post("/api/generate", json={"model": "nope", "prompt": "x"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
        r = c.post("/api/chat", json={"messages": [{"role": "user", "content": "x"}]})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "x", "raw": True, "system": "s"})
        assert r.json() == {"error": "raw mode does not support template, system, or context"}
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "x", "format": "yaml"})
        assert (r.status_code, r.json()["error"]) == (
            400,
            'invalid format: "yaml"; expected "json" or a valid JSON Schema object',
        )
        r = c.post(
            "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 21}
        )
        assert r.json() == {"error": "top_logprobs must be between 0 and 20"}
        r = c.post(
            "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "think": True}
        )
        assert (r.status_code, r.json()) == (400, {"error": '"smollm2" does not support thinking'})
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "x", "options": {"num_ctx": "big"}})
        assert (r.status_code, r.json()) == (500, {"error": 'option "num_ctx" must be of type integer'})
        r = c.post(
            "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "think": "huge"}
        )
        assert r.json() == {
            "error": 'invalid think value: "huge" (must be "high", "medium", "low", "max", true, or false)'
        }


def test_runner_killed_mid_stream(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        generate(c, prompt="hi", options={"num_predict": 1})
        pids = smollm2_server.runner_pids()
        assert pids
        lines = []
        body = {
            "model": "smollm2",
            "prompt": "Count from 1 to 1000: 1, 2, 3,",
            "raw": True,
            "options": {"num_predict": 2000, "temperature": 0},
        }
        with c.stream("POST", "/api/generate", json=body) as r:
            for line in r.iter_lines():
                lines.append(json.loads(line))
                if len(lines) == 3:
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
        assert "error" in lines[-1]
        assert "runner" in lines[-1]["error"]
        again = generate(c, prompt="Say yes.", options={"num_predict": 4})
        assert again["eval_count"] >= 1


def test_client_disconnect_frees_slot(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        for _ in range(6):  # more abandoned streams than slots
            with c.stream(
                "POST",
                "/api/generate",
                json={"model": "smollm2", "prompt": "Write a long essay.", "options": {"num_predict": 5000}},
            ) as r:
                next(r.iter_lines())
        started = time.monotonic()
        out = generate(c, prompt="Say yes.", options={"num_predict": 4})
        assert out["eval_count"] >= 1
        assert time.monotonic() - started < 30


def test_queue_overflow_is_503(start_server: object, smollm2_gguf: Path) -> None:
    from tests.conftest import create_from_gguf

    srv = start_server(OLLAMA_MAX_QUEUE="1")  # type: ignore[operator]
    with srv.client() as c:
        create_from_gguf(c, "smollm2", smollm2_gguf)
    statuses: list[int] = []
    bodies: list[dict] = []

    def run(ctx: int) -> None:
        with srv.client() as c:
            r = c.post(
                "/api/generate",
                json={
                    "model": "smollm2",
                    "prompt": "hi",
                    "stream": False,
                    "options": {"num_ctx": ctx, "num_predict": 1},
                },
            )
            statuses.append(r.status_code)
            bodies.append(r.json())

    # Five loads of different contexts at once: one loads, one waits in the queue of 1, the rest
    # are refused. They start together (a barrier, not sleeps), so the outcome does not hang on timing.
    barrier = threading.Barrier(5)

    def run_together(ctx: int) -> None:
        barrier.wait(timeout=30)
        run(ctx)

    threads = [threading.Thread(target=run_together, args=(256 + 64 * i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 503 in statuses and 200 in statuses
    assert {"error": "server busy, please try again.  maximum pending requests exceeded"} in bodies


@pytest.mark.parametrize("inputs", ["hello world", ["hello world", "goodbye moon"]])
def test_embed(smollm2_server: ServerProcess, inputs: str | list[str]) -> None:
    with smollm2_server.client() as c:
        r = c.post("/api/embed", json={"model": "smollm2", "input": inputs})
        assert r.status_code == 200, r.text
        body = r.json()
        n = 1 if isinstance(inputs, str) else len(inputs)
        assert len(body["embeddings"]) == n
        vec = body["embeddings"][0]
        assert len(vec) == 576
        assert abs(sum(v * v for v in vec) - 1.0) < 1e-3
        r = c.post("/api/embed", json={"model": "smollm2", "input": "hello world", "dimensions": 8})
        short = r.json()["embeddings"][0]
        assert len(short) == 8 and abs(sum(v * v for v in short) - 1.0) < 1e-3
        legacy = c.post("/api/embeddings", json={"model": "smollm2", "prompt": "hello world"}).json()["embedding"]
        assert len(legacy) == 576 and abs(sum(v * v for v in legacy) - 1.0) > 1e-3
        r = c.post("/api/embed", json={"model": "smollm2", "input": "word " * 3000, "truncate": False})
        assert (r.status_code, r.json()) == (400, {"error": "the input length exceeds the context length"})


def test_load_options_reload_and_max_loaded_models(start_server: object, smollm2_gguf: Path) -> None:
    from tests.conftest import create_from_gguf

    srv = start_server(OLLAMA_MAX_LOADED_MODELS="1")  # type: ignore[operator]
    with srv.client() as c:
        create_from_gguf(c, "a", smollm2_gguf)
        r = c.post("/api/create", json={"model": "b", "from": "a", "system": "x", "stream": False})
        assert r.status_code == 200
        generate_opts = {"prompt": "hi", "stream": False}
        r = c.post(
            "/api/generate", json={"model": "a", **generate_opts, "options": {"num_ctx": 1024, "num_predict": 1}}
        )
        assert r.status_code == 200, r.text
        assert [(m["name"], m["context_length"]) for m in c.get("/api/ps").json()["models"]] == [("a:latest", 1024)]
        # A different num_ctx is a load-time option: the runner is replaced.
        r = c.post("/api/generate", json={"model": "a", **generate_opts, "options": {"num_ctx": 512, "num_predict": 1}})
        assert r.json()["load_duration"] > 0
        assert [(m["name"], m["context_length"]) for m in c.get("/api/ps").json()["models"]] == [("a:latest", 512)]
        # Sampling options never reload; load_duration is still the (short) time it took to get the
        # runner, never 0, as in Ollama (`--verbose` prints it).
        r = c.post(
            "/api/generate",
            json={"model": "a", **generate_opts, "options": {"num_ctx": 512, "temperature": 0.1, "num_predict": 1}},
        )
        assert 0 < r.json()["load_duration"] < 1_000_000_000
        # "b" shares a's weights blob: Ollama keys runners by weights, so it reuses the loaded runner.
        r = c.post("/api/generate", json={"model": "b", **generate_opts, "options": {"num_ctx": 512, "num_predict": 1}})
        assert r.status_code == 200
        assert len(c.get("/api/ps").json()["models"]) == 1


def test_debug_render_only(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        r = c.post(
            "/api/chat",
            json={
                "model": "smollm2",
                "_debug_render_only": True,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            },
        )
        body = r.json()
        assert body["done"] is True and body["message"]["content"] == ""
        assert body["_debug_info"] == {
            "rendered_template": "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        }
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "_debug_render_only": True})
        assert r.json()["_debug_info"]["rendered_template"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("bad", [49152, -1, 2**31])
def test_out_of_vocabulary_context_is_a_400_and_other_requests_go_on(smollm2_server: ServerProcess, bad: int) -> None:
    with (
        smollm2_server.client() as c,
        c.stream(
            "POST",
            "/api/generate",
            json={
                "model": "smollm2",
                "prompt": "Count from 1 to 1000: 1, 2, 3,",
                "raw": True,
                "options": {"num_predict": 30, "temperature": 0},
            },
        ) as other,
    ):
        lines = other.iter_lines()
        assert "response" in json.loads(next(lines))  # in flight on the same runner
        r = c.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "context": [1, bad], "stream": False})
        assert (r.status_code, r.json()) == (
            400,
            {"error": f"invalid token id {bad}: the model's vocabulary has ids 0 to 49151"},
        )
        rest = [json.loads(line) for line in lines]
        assert rest[-1]["done"] is True and rest[-1]["done_reason"] == "length"
    with smollm2_server.client() as c:
        assert generate(c, prompt="Say yes.", options={"num_predict": 2})["eval_count"] >= 1


def test_loaded_model_reports_load_duration(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        generate(c, prompt="hi", options={"num_predict": 1})  # loaded now
        again = generate(c, prompt="hi", options={"num_predict": 1})
        chatted = chat(c, [{"role": "user", "content": "hi"}], options={"num_predict": 1})
        embedded = c.post("/api/embed", json={"model": "smollm2", "input": "hi"}).json()
        embedded_again = c.post("/api/embed", json={"model": "smollm2", "input": "hi"}).json()
    for body in (again, chatted, embedded_again):
        assert 0 < body["load_duration"] < body["total_duration"]
    assert embedded["load_duration"] > 0


def test_context_continues_the_conversation(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        first = generate(c, prompt="My name is Ada.", options={**GREEDY, "num_predict": 6})
        context = first["context"]
        prompt = "<|im_start|>user\nMy name is Ada.<|im_end|>\n<|im_start|>assistant\n"
        assert first["done_reason"] == "length" and first["eval_count"] == 6
        assert len(context) == first["prompt_eval_count"] + 6
        # Sent back, the context is the conversation so far, in front of the next turn's prompt ...
        rendered = c.post(
            "/api/generate",
            json={"model": "smollm2", "prompt": "What is my name?", "context": context, "_debug_render_only": True},
        ).json()["_debug_info"]
        turn = "<|im_start|>user\nWhat is my name?<|im_end|>\n<|im_start|>assistant\n"
        assert rendered == {"rendered_template": prompt + first["response"] + turn}
        # ... so the model evaluates those tokens again, and the new answer's context extends the old one.
        alone = generate(c, prompt="What is my name?", options={**GREEDY, "num_predict": 4})
        second = generate(c, prompt="What is my name?", context=context, options={**GREEDY, "num_predict": 4})
        assert second["prompt_eval_count"] == len(context) + alone["prompt_eval_count"]
        assert second["context"][: len(context)] == context
        assert len(second["context"]) == second["prompt_eval_count"] + second["eval_count"]


def test_template_render_does_not_block_other_requests(smollm2_server: ServerProcess) -> None:
    # A template whose cost the client chooses renders in a worker thread: other clients keep being served.
    with smollm2_server.client() as c:
        generate(c, prompt="hi", options={"num_predict": 1})  # loaded, so the next request renders at once
        heavy = {
            "model": "smollm2",
            "prompt": "hi",
            "stream": False,
            "options": {"num_predict": 1},
            "template": "{{ range 5000000 }}{{ end }}{{ .Prompt }}",
        }
        done: list[float] = []

        def render() -> None:
            with smollm2_server.client() as other:
                started = time.monotonic()
                other.post("/api/generate", json=heavy)
                done.append(time.monotonic() - started)

        thread = threading.Thread(target=render)
        thread.start()
        time.sleep(0.5)
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            assert c.get("/api/tags").status_code == 200
            latencies.append(time.monotonic() - started)
        thread.join()
    assert done and done[0] > 1.0  # the render was still going while /api/tags was asked
    assert max(latencies) < 0.5, latencies
