"""Settings: Ollama's variable names, defaults and parsing rules; bad values name the variable."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from pollama.config import Settings, parse_host
from pollama.duration import FOREVER, format_go_duration, keep_alive_seconds, parse_go_duration
from pollama.errors import ConfigError, InvalidRequest


def test_defaults() -> None:
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.host.url == "http://127.0.0.1:11434"
    assert s.models == Path("/home/u/.ollama/models")
    assert s.keep_alive == 300
    assert s.load_timeout == 300
    assert s.num_parallel == 1
    assert s.max_queue == 512
    assert s.effective_max_loaded_models == 3
    assert s.default_num_ctx == 4096
    assert s.kv_cache_type == "f16"
    assert s.flash_attention is None
    assert s.noprune is False and s.nohistory is False


@pytest.mark.parametrize(
    ("value", "scheme", "host", "port", "path"),
    [
        ("", "http", "127.0.0.1", 11434, ""),
        ("1.2.3.4", "http", "1.2.3.4", 11434, ""),
        (":1234", "http", "", 1234, ""),
        ("example.com", "http", "example.com", 11434, ""),
        ("example.com:1234", "http", "example.com", 1234, ""),
        ("http://example.com", "http", "example.com", 80, ""),
        ("https://example.com", "https", "example.com", 443, ""),
        ("https://example.com:1234/path", "https", "example.com", 1234, "path"),
        ("ollama.com", "https", "ollama.com", 443, ""),
        ("[::1]:8080", "http", "::1", 8080, ""),
        ("::1", "http", "::1", 11434, ""),
        ('  "0.0.0.0:5000" ', "http", "0.0.0.0", 5000, ""),
    ],
)
def test_host_rules(value: str, scheme: str, host: str, port: int, path: str) -> None:
    parsed = Settings.from_env({"OLLAMA_HOST": value, "HOME": "/h"}).host
    assert (parsed.scheme, parsed.host, parsed.port, parsed.path) == (scheme, host, port, path)


def test_client_url_rewrites_wildcards() -> None:
    assert parse_host("0.0.0.0:1234").url == "http://127.0.0.1:1234"
    assert parse_host(":1234").url == "http://127.0.0.1:1234"
    assert parse_host("[::]:1").url == "http://[::1]:1"
    assert parse_host("localhost").is_loopback
    assert not parse_host("example.com").is_loopback
    assert parse_host("0.0.0.0").connects_locally


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"OLLAMA_HOST": "localhost:99999"}, "OLLAMA_HOST"),
        ({"OLLAMA_HOST": "ftp://x"}, "OLLAMA_HOST"),
        ({"OLLAMA_NUM_PARALLEL": "two"}, "OLLAMA_NUM_PARALLEL"),
        ({"OLLAMA_NUM_PARALLEL": "0"}, "OLLAMA_NUM_PARALLEL"),
        ({"OLLAMA_MAX_QUEUE": "-1"}, "OLLAMA_MAX_QUEUE"),
        ({"OLLAMA_KEEP_ALIVE": "5 minutes"}, "OLLAMA_KEEP_ALIVE"),
        ({"OLLAMA_NOPRUNE": "maybe"}, "OLLAMA_NOPRUNE"),
        ({"OLLAMA_KV_CACHE_TYPE": "q5_1"}, "OLLAMA_KV_CACHE_TYPE"),
        ({"OLLAMA_DEBUG": "loud"}, "OLLAMA_DEBUG"),
        ({"OLLAMA_FLASH_ATTENTION": "sometimes"}, "OLLAMA_FLASH_ATTENTION"),
        ({"OLLAMA_AUTH": "yes"}, "OLLAMA_AUTH"),
        ({"OLLAMA_SCHED_SPREAD": "both"}, "OLLAMA_SCHED_SPREAD"),
        ({"OLLAMA_NO_CLOUD": "please"}, "OLLAMA_NO_CLOUD"),
        ({"OLLAMA_GPU_OVERHEAD": "1GB"}, "OLLAMA_GPU_OVERHEAD"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({"HOME": "/h", **env})


def test_parsed_values() -> None:
    s = Settings.from_env(
        {
            "HOME": "/h",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_LOAD_TIMEOUT": "0",
            "OLLAMA_NUM_PARALLEL": "4",
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "OLLAMA_ORIGINS": "http://a.com, https://b.*",
            "OLLAMA_DEBUG": "2",
            "OLLAMA_NOPRUNE": "true",
            "OLLAMA_FLASH_ATTENTION": "0",
            "OLLAMA_KV_CACHE_TYPE": "Q8_0",
            "OLLAMA_CONTEXT_LENGTH": "8192",
            "OLLAMA_MODELS": "/data/models",
        }
    )
    assert s.keep_alive == math.inf
    assert s.load_timeout == math.inf
    assert s.num_parallel == 4
    assert s.effective_max_loaded_models == 2
    assert s.origins == ("http://a.com", "https://b.*")
    assert s.debug == 2
    assert s.noprune is True
    assert s.flash_attention is False
    assert s.kv_cache_type == "q8_0"
    assert s.default_num_ctx == 8192
    assert s.models == Path("/data/models")
    assert Settings.from_env({"HOME": "/h", "OLLAMA_KEEP_ALIVE": "600"}).keep_alive == 600
    assert Settings.from_env({"HOME": "/h", "OLLAMA_KEEP_ALIVE": "1h30m"}).keep_alive == 5400


def test_go_durations() -> None:
    assert parse_go_duration("0") == 0
    assert parse_go_duration("1h30m") == 5400 * 10**9
    assert parse_go_duration("1.5s") == 1_500_000_000
    assert parse_go_duration("-2m") == -120 * 10**9
    assert parse_go_duration("300ms") == 300_000_000
    with pytest.raises(ValueError, match=r'^time: missing unit in duration "300"$'):
        parse_go_duration("300")
    with pytest.raises(ValueError, match=r'^time: unknown unit "d" in duration "3d"$'):
        parse_go_duration("3d")
    with pytest.raises(ValueError, match=r'^time: invalid duration "abc"$'):
        parse_go_duration("abc")
    assert format_go_duration(90) == "1m30s"
    assert format_go_duration(1.5) == "1.5s"
    assert format_go_duration(0) == "0s"
    assert format_go_duration(3600) == "1h0m0s"


def test_keep_alive_values() -> None:
    assert keep_alive_seconds(None) is None
    assert keep_alive_seconds(10) == 10
    assert keep_alive_seconds(2.5) == 2.5
    assert keep_alive_seconds("5m") == 300
    assert keep_alive_seconds("0") == 0
    assert keep_alive_seconds(-1) == FOREVER
    assert keep_alive_seconds("-1m") == FOREVER
    with pytest.raises(InvalidRequest, match='missing unit in duration "300"'):
        keep_alive_seconds("300")
    with pytest.raises(InvalidRequest, match="Unsupported type"):
        keep_alive_seconds([1])


def test_variables_pollama_cannot_honour_stop_it() -> None:
    # pollama keeps no per-GPU memory budget and runs on the one backend llama-cpp-python was built with.
    with pytest.raises(
        ConfigError,
        match=r"^OLLAMA_GPU_OVERHEAD: pollama does not measure GPU memory, so it "
        r"cannot reserve 1073741824 bytes per GPU",
    ):
        Settings.from_env({"HOME": "/h", "OLLAMA_GPU_OVERHEAD": "1073741824"})
    with pytest.raises(ConfigError, match=r"^OLLAMA_LLM_LIBRARY: pollama cannot switch to the 'cuda_v12' library"):
        Settings.from_env({"HOME": "/h", "OLLAMA_LLM_LIBRARY": "cuda_v12"})


def test_variables_pollama_honours() -> None:
    s = Settings.from_env(
        {
            "HOME": "/h",
            "OLLAMA_GPU_OVERHEAD": "0",
            "OLLAMA_LLM_LIBRARY": "cpu_avx2",
            "OLLAMA_AUTH": "true",
            "OLLAMA_SCHED_SPREAD": "1",
            "OLLAMA_NO_CLOUD": "1",
        }
    )
    assert (s.gpu_overhead, s.llm_library, s.force_cpu, s.auth, s.sched_spread, s.no_cloud) == (
        0,
        "cpu",
        True,
        True,
        True,
        True,
    )
    assert Settings.from_env({"HOME": "/h"}).force_cpu is False
    described = s.describe()
    assert (described["OLLAMA_LLM_LIBRARY"], described["OLLAMA_NO_CLOUD"]) == ("cpu", "true")


def test_serve_refuses_a_variable_it_cannot_honour(isolated_env: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pollama", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OLLAMA_LLM_LIBRARY": "rocm", "OLLAMA_HOST": "127.0.0.1:1"},
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: OLLAMA_LLM_LIBRARY: pollama cannot switch to the 'rocm' library")
    assert len(done.stderr.splitlines()) == 1 and "Listening" not in done.stdout + done.stderr


def test_llm_library_cpu_keeps_layers_off_the_gpu(start_server: Any, smollm2_gguf: Path) -> None:
    # A request asking for GPU layers still loads a runner with --n-gpu-layers 0.
    from tests.conftest import create_from_gguf

    server = start_server(OLLAMA_LLM_LIBRARY="cpu")
    with server.client() as c:
        create_from_gguf(c, "m", smollm2_gguf)
        r = c.post(
            "/api/generate",
            json={"model": "m", "prompt": "Hi", "stream": False, "options": {"num_gpu": 99, "num_predict": 1}},
        )
        assert r.status_code == 200, r.text
        commands = [_read(p).split(b"\0") for p in Path("/proc").glob("[0-9]*/cmdline")]
        runner = [cmd for cmd in commands if b"pollama.runner" in cmd and str(server.models).encode() in b" ".join(cmd)]
        assert len(runner) == 1
        flags = runner[0]
        assert flags[flags.index(b"--n-gpu-layers") + 1] == b"0"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
