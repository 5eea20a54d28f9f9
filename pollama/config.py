"""Every setting pollama reads from the environment, parsed once into a typed ``Settings``.

Names and defaults are Ollama's (``OLLAMA_HOST``, ``OLLAMA_MODELS``, ``OLLAMA_KEEP_ALIVE``, ...), and
values are cleaned the way Ollama cleans them (whitespace trimmed, surrounding quotes removed).
Where Ollama silently falls back to a default on a bad value, pollama refuses to start and names the
variable instead: a typo in a setting should never be ignored.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pollama.duration import FOREVER, parse_go_duration
from pollama.errors import ConfigError

DEFAULT_PORT = 11434
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


# What ``pollama serve --help`` lists: (variable, default, meaning).
SERVER_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("OLLAMA_HOST", "127.0.0.1:11434", "Address to listen on (':port' = all interfaces)"),
    ("OLLAMA_MODELS", "~/.ollama/models", "The models directory"),
    ("OLLAMA_KEEP_ALIVE", "5m", "How long an idle model stays loaded (negative = forever)"),
    ("OLLAMA_LOAD_TIMEOUT", "5m", "How long a model load may take before giving up"),
    ("OLLAMA_CONTEXT_LENGTH", "4096", "Context length when a request sets no num_ctx"),
    ("OLLAMA_NUM_PARALLEL", "1", "Requests one loaded model serves at once"),
    ("OLLAMA_MAX_LOADED_MODELS", "3", "Models loaded at once"),
    ("OLLAMA_MAX_QUEUE", "512", "Requests waiting for a model before 503"),
    ("OLLAMA_ORIGINS", "", "Extra allowed CORS origins, comma separated"),
    ("OLLAMA_DEBUG", "0", "Log level: 1 = debug, 2 = trace"),
    ("OLLAMA_NOPRUNE", "false", "Do not remove unused blobs at startup"),
    ("OLLAMA_FLASH_ATTENTION", "auto", "Force flash attention on or off"),
    ("OLLAMA_KV_CACHE_TYPE", "f16", "K/V cache type: f16, q8_0 or q4_0"),
    ("OLLAMA_GO_TEMPLATE", "true", "Use a Modelfile TEMPLATE over the GGUF's Jinja template"),
    ("OLLAMA_LLM_LIBRARY", "", "'cpu' keeps every model off the GPU (no other value)"),
    ("OLLAMA_SCHED_SPREAD", "false", "Spread models over all GPUs (llama.cpp always does)"),
    ("OLLAMA_GPU_OVERHEAD", "0", "Only 0: pollama keeps no per-GPU memory budget"),
    ("OLLAMA_NO_CLOUD", "false", "Disable cloud models (pollama has none)"),
    ("POLLAMA_API_KEYS", "", "API keys a client must send (Bearer or x-api-key), comma separated"),
    ("POLLAMA_API_KEYS_FILE", "", "File of API keys, one a line (re-read on change or SIGHUP)"),
    ("POLLAMA_TLS_CERT", "", "PEM certificate (chain) to serve HTTPS with; needs POLLAMA_TLS_KEY"),
    ("POLLAMA_TLS_KEY", "", "PEM private key of POLLAMA_TLS_CERT"),
    # Operating pollama: logs and shutdown.
    ("POLLAMA_LOG_FORMAT", "text", "Request and server log lines: text (key=value) or json"),
    ("POLLAMA_SHUTDOWN_GRACE", "10s", "How long streams in flight may finish after SIGTERM"),
    ("POLLAMA_RAY_ADDRESS", "", "Place runners on this Ray cluster (auto: the local one; same as serve --ray)"),
    ("POLLAMA_MAX_REPLICAS", "2", "Most runners one model gets on a Ray cluster when its queue grows"),
)


@dataclass(frozen=True)
class HostAddress:
    """Where the server listens, or where a client connects (``OLLAMA_HOST``)."""

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str = ""

    @property
    def url(self) -> str:
        """Base URL a client uses; a wildcard bind address becomes loopback."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        base = f"{self.scheme}://{host}:{self.port}"
        return f"{base}/{self.path}" if self.path else base

    @property
    def connects_locally(self) -> bool:
        """True when a client reaches this address on this machine (loopback or a wildcard bind)."""
        return self.host in ("", "0.0.0.0", "::") or self.is_loopback

    @property
    def is_loopback(self) -> bool:
        """True when the address is this machine only (``localhost`` or a loopback IP)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Settings:
    """All of pollama's settings. Build one with ``Settings.from_env()``; never mutate it."""

    host: HostAddress = field(default_factory=HostAddress)
    home: Path = field(default_factory=lambda: Path.home() / ".ollama")
    models: Path = field(default_factory=lambda: Path.home() / ".ollama" / "models")
    keep_alive: float = 300.0
    load_timeout: float = 300.0
    context_length: int = 0
    num_parallel: int = 1
    max_loaded_models: int = 0
    max_queue: int = 512
    origins: tuple[str, ...] = ()
    debug: int = 0
    noprune: bool = False
    nohistory: bool = False
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    gpu_overhead: int = 0
    sched_spread: bool = False
    go_template: bool = True
    editor: str = ""
    auth: bool = False
    no_cloud: bool = False
    llm_library: str = ""
    api_keys: tuple[str, ...] = ()
    api_keys_file: Path | None = None
    api_key: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def auth_required(self) -> bool:
        """True when ``POLLAMA_API_KEYS`` or ``POLLAMA_API_KEYS_FILE`` is set: requests need a key."""
        return bool(self.api_keys) or self.api_keys_file is not None

    @property
    def tls(self) -> bool:
        """True when the server serves HTTPS (``POLLAMA_TLS_CERT`` and ``POLLAMA_TLS_KEY``)."""
        return self.tls_cert is not None

    # Operating pollama: logs and shutdown.
    log_format: str = "text"
    shutdown_grace: float = 10.0
    # Scale-out (docs/scale-out.md): the Ray cluster runners are placed on ("" = this machine only).
    ray_address: str = ""
    max_replicas: int = 2

    @property
    def force_cpu(self) -> bool:
        """``OLLAMA_LLM_LIBRARY=cpu``: every model runs with ``num_gpu 0``, whatever a request asks."""
        return self.llm_library == "cpu"

    @property
    def default_num_ctx(self) -> int:
        """Context length used when a request does not set ``num_ctx`` (no VRAM here: the 4096 tier)."""
        return self.context_length if self.context_length > 0 else 4096

    @property
    def effective_max_loaded_models(self) -> int:
        """``OLLAMA_MAX_LOADED_MODELS`` with Ollama's automatic value (3 without GPUs) filled in."""
        return self.max_loaded_models if self.max_loaded_models > 0 else 3

    @property
    def log_dir(self) -> Path:
        """Where a server started in the background by the CLI writes its log."""
        return self.home / "logs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``OLLAMA_*`` variable from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        home_dir = Path(env.get("HOME") or Path.home())
        home = home_dir / ".ollama"
        models_raw = _var(env, "OLLAMA_MODELS")
        models = Path(models_raw).expanduser() if models_raw else home / "models"
        tls_cert, tls_key = _tls(env)
        return cls(
            host=parse_host(_var(env, "OLLAMA_HOST")),
            home=home,
            models=models,
            keep_alive=_duration(env, "OLLAMA_KEEP_ALIVE", 300.0),
            load_timeout=_load_timeout(env),
            context_length=_uint(env, "OLLAMA_CONTEXT_LENGTH", 0),
            num_parallel=_uint(env, "OLLAMA_NUM_PARALLEL", 1, minimum=1),
            max_loaded_models=_uint(env, "OLLAMA_MAX_LOADED_MODELS", 0),
            max_queue=_uint(env, "OLLAMA_MAX_QUEUE", 512, minimum=1),
            origins=tuple(o.strip() for o in _var(env, "OLLAMA_ORIGINS").split(",") if o.strip()),
            debug=_debug(env),
            noprune=_bool(env, "OLLAMA_NOPRUNE", False),
            nohistory=_bool(env, "OLLAMA_NOHISTORY", False),
            flash_attention=_optional_bool(env, "OLLAMA_FLASH_ATTENTION"),
            kv_cache_type=_kv_cache_type(env),
            gpu_overhead=_gpu_overhead(env),
            sched_spread=_bool(env, "OLLAMA_SCHED_SPREAD", False),
            go_template=_bool(env, "OLLAMA_GO_TEMPLATE", True),
            editor=_var(env, "OLLAMA_EDITOR"),
            auth=_bool(env, "OLLAMA_AUTH", False),
            no_cloud=_bool(env, "OLLAMA_NO_CLOUD", False),
            llm_library=_llm_library(env),
            api_keys=_api_keys(env),
            api_keys_file=_api_keys_file(env),
            api_key=_var(env, "POLLAMA_API_KEY"),
            tls_cert=tls_cert,
            tls_key=tls_key,
            # Operating pollama: logs and shutdown.
            log_format=_log_format(env),
            shutdown_grace=_shutdown_grace(env),
            ray_address=_var(env, "POLLAMA_RAY_ADDRESS"),
            max_replicas=_uint(env, "POLLAMA_MAX_REPLICAS", 2, minimum=1),
        )

    def describe(self) -> dict[str, str]:
        """The settings as ``OLLAMA_*`` names and values, for the server's start-up log line."""
        return {
            "OLLAMA_HOST": self.host.url,
            "OLLAMA_MODELS": str(self.models),
            "OLLAMA_KEEP_ALIVE": "forever" if math.isinf(self.keep_alive) else f"{self.keep_alive:g}s",
            "OLLAMA_LOAD_TIMEOUT": "forever" if math.isinf(self.load_timeout) else f"{self.load_timeout:g}s",
            "OLLAMA_CONTEXT_LENGTH": str(self.context_length),
            "OLLAMA_NUM_PARALLEL": str(self.num_parallel),
            "OLLAMA_MAX_LOADED_MODELS": str(self.max_loaded_models),
            "OLLAMA_MAX_QUEUE": str(self.max_queue),
            "OLLAMA_ORIGINS": ",".join(self.origins),
            "OLLAMA_DEBUG": str(self.debug),
            "OLLAMA_NOPRUNE": str(self.noprune).lower(),
            "OLLAMA_FLASH_ATTENTION": "auto" if self.flash_attention is None else str(self.flash_attention).lower(),
            "OLLAMA_KV_CACHE_TYPE": self.kv_cache_type,
            "OLLAMA_SCHED_SPREAD": str(self.sched_spread).lower(),
            "POLLAMA_LOG_FORMAT": self.log_format,
            "POLLAMA_SHUTDOWN_GRACE": f"{self.shutdown_grace:g}s",
            "POLLAMA_RAY_ADDRESS": self.ray_address,
            "POLLAMA_MAX_REPLICAS": str(self.max_replicas),
            "OLLAMA_NO_CLOUD": str(self.no_cloud).lower(),
            "OLLAMA_LLM_LIBRARY": self.llm_library,
            "OLLAMA_GO_TEMPLATE": str(self.go_template).lower(),
            # Never a key itself: only how many there are and where the file is.
            "POLLAMA_API_KEYS": f"{len(self.api_keys)} keys" if self.api_keys else "",
            "POLLAMA_API_KEYS_FILE": str(self.api_keys_file or ""),
            "POLLAMA_TLS_CERT": str(self.tls_cert or ""),
        }


def _var(env: Mapping[str, str], name: str) -> str:
    """A variable's value as Ollama reads it: whitespace trimmed, then surrounding quotes removed."""
    return env.get(name, "").strip().strip("\"'")


def parse_host(value: str) -> HostAddress:
    """Apply Ollama's ``OLLAMA_HOST`` rules: default scheme/port per scheme, ``:port`` binds all interfaces."""
    default_port = DEFAULT_PORT
    scheme, sep, hostport = value.partition("://")
    if not sep:
        scheme, hostport = "http", value
        if value == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    else:
        raise ConfigError(f"OLLAMA_HOST: unsupported scheme {scheme!r} in {value!r} (use http or https)")
    hostport, _, path = hostport.partition("/")
    host, port_text = _split_host_port(hostport)
    if port_text is None:
        inner = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(inner))
        except ValueError:
            host = hostport or "127.0.0.1"
        port = default_port
    else:
        try:
            port = int(port_text)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise ConfigError(f"OLLAMA_HOST: invalid port {port_text!r} in {value!r}")
    return HostAddress(scheme=scheme, host=host, port=port, path=path)


def _split_host_port(hostport: str) -> tuple[str, str | None]:
    """Go's ``net.SplitHostPort``: ``(host, port)``, or ``(hostport, None)`` when there is no port."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return hostport, None
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return hostport, None
    host, _, port = hostport.partition(":")
    return host, port


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _optional_bool(env, name)
    return default if value is None else value


def _optional_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = _var(env, name)
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}: invalid boolean {raw!r} (use true or false)")


def _uint(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _var(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: invalid number {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    """A Go duration or integer seconds; negative means forever (``math.inf``)."""
    raw = _var(env, name)
    if not raw:
        return default
    try:
        seconds = parse_go_duration(raw) / 1e9
    except ValueError:
        try:
            seconds = float(int(raw))
        except ValueError:
            raise ConfigError(f"{name}: invalid duration {raw!r} (use e.g. 5m, 1h, or seconds)") from None
    return FOREVER if seconds < 0 else seconds


def _load_timeout(env: Mapping[str, str]) -> float:
    seconds = _duration(env, "OLLAMA_LOAD_TIMEOUT", 300.0)
    return FOREVER if seconds <= 0 else seconds


def _debug(env: Mapping[str, str]) -> int:
    """``OLLAMA_DEBUG``: 0 = info, 1 = debug, 2 = trace (booleans count as 0/1)."""
    raw = _var(env, "OLLAMA_DEBUG")
    if not raw:
        return 0
    if raw in _TRUE:
        return 1
    if raw in _FALSE:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"OLLAMA_DEBUG: invalid level {raw!r} (use 0, 1 or 2)") from None


def _kv_cache_type(env: Mapping[str, str]) -> str:
    raw = _var(env, "OLLAMA_KV_CACHE_TYPE")
    if not raw:
        return "f16"
    if raw.lower() not in KV_CACHE_TYPES:
        raise ConfigError(f"OLLAMA_KV_CACHE_TYPE: unsupported type {raw!r} (use one of {', '.join(KV_CACHE_TYPES)})")
    return raw.lower()


def _gpu_overhead(env: Mapping[str, str]) -> int:
    """``OLLAMA_GPU_OVERHEAD``: only 0 (pollama keeps no per-GPU memory budget it could reserve from)."""
    value = _uint(env, "OLLAMA_GPU_OVERHEAD", 0)
    if value:
        raise ConfigError(
            f"OLLAMA_GPU_OVERHEAD: pollama does not measure GPU memory, so it cannot reserve "
            f"{value} bytes per GPU (llama.cpp places the layers: unset it, or lower num_gpu)"
        )
    return value


_CPU_LIBRARIES = ("cpu", "cpu_avx", "cpu_avx2")


def _llm_library(env: Mapping[str, str]) -> str:
    """``OLLAMA_LLM_LIBRARY``: ``cpu`` forces CPU inference; no other library can be chosen at run time."""
    raw = _var(env, "OLLAMA_LLM_LIBRARY")
    if not raw:
        return ""
    if raw.lower() in _CPU_LIBRARIES:
        return "cpu"
    raise ConfigError(
        f"OLLAMA_LLM_LIBRARY: pollama cannot switch to the {raw!r} library (its backend is the one "
        f"llama-cpp-python was built with, see docs/gpu.md); use cpu or unset it"
    )


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """``POLLAMA_API_KEYS``: comma-separated keys; set but holding no key is an error."""
    raw = _var(env, "POLLAMA_API_KEYS")
    if not raw:
        return ()
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    if not keys:
        raise ConfigError("POLLAMA_API_KEYS: no key in the value (use key1,key2)")
    return keys


def read_api_keys_file(path: Path) -> tuple[str, ...]:
    """The keys of an API keys file: one a line, blank lines and ``#`` comments ignored.

    Raises ``ConfigError`` naming ``POLLAMA_API_KEYS_FILE`` when the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"POLLAMA_API_KEYS_FILE: cannot read {path}: {reason}") from None
    keys = (line.strip() for line in text.splitlines())
    return tuple(key for key in keys if key and not key.startswith("#"))


def _api_keys_file(env: Mapping[str, str]) -> Path | None:
    """``POLLAMA_API_KEYS_FILE``: checked readable now, so a bad path stops the start."""
    raw = _var(env, "POLLAMA_API_KEYS_FILE")
    if not raw:
        return None
    path = Path(raw).expanduser()
    read_api_keys_file(path)
    return path


def _tls(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    """``POLLAMA_TLS_CERT`` and ``POLLAMA_TLS_KEY``: both (readable files) or neither."""
    cert_raw, key_raw = _var(env, "POLLAMA_TLS_CERT"), _var(env, "POLLAMA_TLS_KEY")
    cert = Path(cert_raw).expanduser() if cert_raw else None
    key = Path(key_raw).expanduser() if key_raw else None
    if (cert is None) != (key is None):
        missing, present = (
            ("POLLAMA_TLS_KEY", "POLLAMA_TLS_CERT") if key is None else ("POLLAMA_TLS_CERT", "POLLAMA_TLS_KEY")
        )
        raise ConfigError(f"{missing}: not set, but {present} is (HTTPS needs both a certificate and its key)")
    for path, var in ((cert, "POLLAMA_TLS_CERT"), (key, "POLLAMA_TLS_KEY")):
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ConfigError(f"{var}: cannot read {path}")
    return cert, key


# --- operating pollama: logs and shutdown -------------------------------------------------------

LOG_FORMATS = ("text", "json")


def _log_format(env: Mapping[str, str]) -> str:
    """``POLLAMA_LOG_FORMAT``: ``text`` (key=value lines, the default) or ``json`` (one object a line)."""
    raw = _var(env, "POLLAMA_LOG_FORMAT").lower() or "text"
    if raw not in LOG_FORMATS:
        raise ConfigError(f"POLLAMA_LOG_FORMAT: invalid format {raw!r} (use text or json)")
    return raw


def _shutdown_grace(env: Mapping[str, str]) -> float:
    """``POLLAMA_SHUTDOWN_GRACE``: a Go duration or seconds (default 10 s); negative is refused."""
    if _var(env, "POLLAMA_SHUTDOWN_GRACE").strip().startswith("-"):
        raise ConfigError("POLLAMA_SHUTDOWN_GRACE: must not be negative")
    return _duration(env, "POLLAMA_SHUTDOWN_GRACE", 10.0)
