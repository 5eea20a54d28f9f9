"""The server's handle on a runner subprocess: start it, talk to it, notice when it dies, stop it.

``RunnerProcess.start(spec)`` launches ``python -m pollama.runner`` for a ``LoadSpec`` and waits for
its ready line (bounded by the load timeout). Each call opens its own connection to the runner's
Unix socket, so cancelling a call (the HTTP client went away) closes the connection and the runner
frees the slot. If the process exits mid-request the call fails with Ollama's "runner has
unexpectedly stopped" error and the scheduler forgets the runner, so the next request reloads.

This module also owns the client side of the wire protocol: ``ModelRunner`` is what the inference
service needs from a loaded model (the seam tests fake), ``CompletionParams`` is one generation
request, and a generation comes back as typed events (``PromptTokens``, ``Piece``, ``Finished``);
error events become domain errors by their kind (``pollama.runner.protocol``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pollama.errors import RunnerError
from pollama.runner.protocol import event_error
from pollama.scheduler.scheduler import Runner
from pollama.scheduler.spec import LoadSpec

log = logging.getLogger(__name__)

RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal "
    "error, check ollama server logs for details"
)


@dataclass(frozen=True)
class CompletionParams:
    """One generation: the prompt and how to sample it (load-time options went into the ``LoadSpec``)."""

    prompt: str
    options: dict[str, Any] = field(default_factory=dict)
    shift: bool = True
    truncate: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    return_tokens: bool = False  # send the prompt's tokens back (Ollama's ``context``)
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    # Raw image files, one per media marker in ``prompt`` and in the markers' order.
    images: list[bytes] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        """The request line sent to the runner."""
        body: dict[str, Any] = {
            "op": "completion",
            "prompt": self.prompt,
            "shift": self.shift,
            "truncate": self.truncate,
            "options": self.options,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "return_tokens": self.return_tokens,
        }
        if self.grammar is not None:
            body["grammar"] = self.grammar
        if self.json_schema is not None:
            body["json_schema"] = self.json_schema
        if self.images:
            body["images"] = [base64.b64encode(image).decode("ascii") for image in self.images]
        return body


@dataclass(frozen=True)
class PromptTokens:
    """The prompt was tokenized: its length, and its tokens when asked for (``return_tokens``)."""

    count: int
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Piece:
    """Generated text (one or more tokens' worth), with per-token log probabilities when asked for."""

    content: str
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    """The generation ended: why, its counts and durations (ns), and the generated tokens."""

    done_reason: str = "stop"
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    tokens: list[int] = field(default_factory=list)
    prompt_cached: int = 0  # of ``prompt_eval_count``, tokens taken from a KV cache instead of evaluated
    draft_tokens: int = 0  # speculative draft tokens verified
    draft_accepted: int = 0  # of them, accepted as output


CompletionEvent = PromptTokens | Piece | Finished


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, and how many tokens were evaluated."""

    vectors: list[list[float]]
    prompt_eval_count: int = 0


def completion_event(event: dict[str, Any]) -> CompletionEvent | None:
    """The typed value of one event of a completion stream (``None`` for one this side ignores)."""
    if "prompt_tokens" in event:
        return PromptTokens(int(event["prompt_tokens"]), [int(t) for t in event.get("tokens") or []])
    if "content" in event:
        return Piece(str(event["content"]), list(event.get("logprobs") or []))
    if event.get("done"):
        return Finished(
            done_reason=str(event.get("done_reason") or "stop"),
            prompt_eval_count=int(event.get("prompt_eval_count", 0)),
            prompt_eval_duration=int(event.get("prompt_eval_duration", 0)),
            eval_count=int(event.get("eval_count", 0)),
            eval_duration=int(event.get("eval_duration", 0)),
            tokens=[int(t) for t in event.get("tokens") or []],
            prompt_cached=int(event.get("prompt_cached", 0)),
            draft_tokens=int(event.get("draft_tokens", 0)),
            draft_accepted=int(event.get("draft_accepted", 0)),
        )
    return None


class ModelRunner(Runner, Protocol):
    """What the inference service needs from a loaded model, beyond the scheduler's ``Runner``."""

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    async def count(self, texts: list[str]) -> list[int]:
        """How many tokens each text is, special tokens included (one call for many texts)."""
        ...

    def complete(self, params: CompletionParams) -> AsyncGenerator[CompletionEvent, None]:
        """The events of one generation, ending with ``Finished``; closing the generator cancels it."""
        ...

    async def embed(self, inputs: list[list[int]]) -> Embeddings: ...


def runner_command(spec: LoadSpec, socket_path: str, *, debug: bool = False) -> list[str]:
    """The command line that starts a runner for ``spec``."""
    cmd = [
        sys.executable,
        "-m",
        "pollama.runner",
        "--model",
        str(spec.model_path),
        "--socket",
        socket_path,
        "--ctx-size",
        str(spec.num_ctx),
        "--parallel",
        str(spec.num_parallel),
        "--batch-size",
        str(spec.num_batch),
        "--kv-cache-type",
        spec.kv_cache_type,
    ]
    if spec.num_thread > 0:
        cmd += ["--threads", str(spec.num_thread)]
    if spec.num_gpu >= 0:
        cmd += ["--n-gpu-layers", str(spec.num_gpu)]
    if spec.main_gpu is not None:
        cmd += ["--main-gpu", str(spec.main_gpu)]
    if spec.use_mmap is False:
        cmd.append("--no-mmap")
    if spec.use_mlock:
        cmd.append("--mlock")
    for adapter in spec.adapters:
        cmd += ["--lora", str(adapter)]
    for projector in spec.projectors:
        cmd += ["--mmproj", str(projector)]
    if spec.draft is not None and spec.draft_num_predict > 0:
        cmd += ["--draft", str(spec.draft), "--draft-max", str(spec.draft_num_predict)]
    if spec.embedding:
        cmd.append("--embedding")
    if spec.flash_attention is not None:
        cmd += ["--flash-attn", "on" if spec.flash_attention else "off"]
    if debug:
        cmd.append("--verbose")
    return cmd


class RunnerOps:
    """The runner's token and embedding requests, built on ``call`` (one request, one reply): shared by
    the ``ModelRunner``s that speak the runner protocol (a local process, a Ray actor)."""

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply (each transport implements it)."""
        raise NotImplementedError

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """``text``'s tokens."""
        return list((await self.call({"op": "tokenize", "content": text, "add_special": add_special}))["tokens"])

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens``."""
        return str((await self.call({"op": "detokenize", "tokens": tokens}))["content"])

    async def count(self, texts: list[str]) -> list[int]:
        """How many tokens each text is, special tokens included (one round trip for all)."""
        if not texts:
            return []
        return [int(n) for n in (await self.call({"op": "count", "texts": texts, "add_special": True}))["counts"]]

    async def embed(self, inputs: list[list[int]]) -> Embeddings:
        """One embedding per token list."""
        reply = await self.call({"op": "embed", "inputs": inputs})
        return Embeddings([list(v) for v in reply["embeddings"]], int(reply.get("prompt_eval_count", 0)))


class RunnerProcess(RunnerOps):
    """One running model."""

    def __init__(self, spec: LoadSpec, proc: asyncio.subprocess.Process, workdir: str, socket_path: str) -> None:
        self.spec = spec
        self._proc = proc
        self._workdir = workdir
        self.socket_path = socket_path
        self.info: dict[str, Any] = {}
        self._stderr: deque[str] = deque(maxlen=40)
        self._stderr_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lost = False  # the socket broke mid-request: treat the runner as gone before its exit is seen

    @classmethod
    async def start(
        cls, spec: LoadSpec, *, load_timeout: float = 300.0, debug: bool = False, env: dict[str, str] | None = None
    ) -> RunnerProcess:
        """Launch a runner and wait until its model is loaded."""
        workdir = _make_runner_dir()
        socket_path = os.path.join(workdir, "sock")
        proc = await asyncio.create_subprocess_exec(
            *runner_command(spec, socket_path, debug=debug),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        runner = cls(spec, proc, workdir, socket_path)
        runner._stderr_task = asyncio.get_running_loop().create_task(runner._pump_stderr())
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=load_timeout if load_timeout > 0 else None)
            if not line:
                await proc.wait()
                raise RunnerError(runner._exit_message())
            runner.info = json.loads(line)
            if "error" in runner.info:  # the runner refused to load (its message is for the user)
                await proc.wait()
                raise event_error(runner.info)
        except TimeoutError:
            await runner.stop()
            raise RunnerError("timed out waiting for llama runner to start") from None
        except BaseException:
            await runner.stop()
            raise
        return runner

    async def _pump_stderr(self) -> None:
        assert self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr.append(text)
            log.debug("%s", text)

    def _exit_message(self) -> str:
        errors = [line for line in self._stderr if "error" in line.lower() or "Error" in line]
        detail = errors[-1] if errors else (self._stderr[-1] if self._stderr else "")
        code = self._proc.returncode
        base = f"llama runner process has terminated: exit status {code}"
        return f"{base}: {detail}" if detail else base

    # --- Runner protocol (scheduler) --------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the process runs and its socket still answers (a broken connection counts as dead
        at once, so the next request gets a new runner even before the process exit is noticed)."""
        return self._proc.returncode is None and not self._lost

    @property
    def memory(self) -> int:
        return self.spec.estimated_memory or int(self.info.get("model_size", 0))

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def wait_exit(self) -> None:
        await self._proc.wait()

    async def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s) and remove its socket folder."""
        self._stopping = True
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._proc.stdin is not None:
            with contextlib.suppress(Exception):
                self._proc.stdin.close()
        if self._stderr_task is not None:
            # The process is gone, so its stderr ends: let the pump drain the last lines, then stop it.
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self._stderr_task, timeout=1.0)
        shutil.rmtree(self._workdir, ignore_errors=True)

    # --- requests ---------------------------------------------------------------------------------

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.alive:
            raise RunnerError(RUNNER_STOPPED)
        try:
            return await asyncio.open_unix_connection(self.socket_path, limit=64 * 1024 * 1024)
        except OSError:
            self._lost = True
            raise RunnerError(RUNNER_STOPPED) from None

    async def stream(self, request: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """Send one request and yield the runner's replies until the last one."""
        reader, writer = await self._open()
        try:
            writer.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    self._lost = True
                    raise RunnerError(RUNNER_STOPPED)
                event = json.loads(line)
                if "error" in event:
                    raise event_error(event)
                yield event
                if event.get("done") or request.get("op") != "completion":
                    return
        except ConnectionError:
            self._lost = True
            raise RunnerError(RUNNER_STOPPED) from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request that has a single reply."""
        async for event in self.stream(request):
            return event
        raise RunnerError(RUNNER_STOPPED)

    async def complete(self, params: CompletionParams) -> AsyncGenerator[CompletionEvent, None]:
        """One generation as typed events (see ``ModelRunner.complete``)."""
        stream = self.stream(params.wire())
        try:
            async for event in stream:
                typed = completion_event(event)
                if typed is not None:
                    yield typed
                if isinstance(typed, Finished):
                    return
        finally:
            await stream.aclose()

    async def health(self) -> dict[str, Any]:
        """The runner's ``{"status": "ok", "busy": n}``."""
        return await self.call({"op": "health"})


async def launch_runner(spec: LoadSpec, *, load_timeout: float, debug: bool = False) -> RunnerProcess:
    """The scheduler's launcher: start a runner for ``spec`` (first clearing socket folders that
    servers which were killed left behind)."""
    await asyncio.to_thread(remove_stale_runner_dirs)
    return await RunnerProcess.start(spec, load_timeout=load_timeout, debug=debug)


# --- socket folders -----------------------------------------------------------------------------
#
# Each runner gets a private folder in the temp dir for its socket, holding an ``owner`` file with
# the server's pid. The server removes the folder when it stops the runner or notices it died; the
# runner removes it when it exits because the server went away (killed: its stdin closed); and a
# folder whose owner is no longer running is removed the next time a server launches a runner.

RUNNER_DIR_PREFIX = "pollama-runner-"
"""Name prefix of a runner's socket folder in the temp dir."""

_OWNER_FILE = "owner"
_UNOWNED_GRACE = 60.0  # seconds: a folder without an owner file may be one being created right now


def _make_runner_dir() -> str:
    """Create a runner's private socket folder and record this process as its owner."""
    workdir = tempfile.mkdtemp(prefix=RUNNER_DIR_PREFIX)
    with open(os.path.join(workdir, _OWNER_FILE), "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    return workdir


def remove_stale_runner_dirs(tmp: str | None = None) -> list[str]:
    """Remove runner socket folders (``pollama-runner-*``) whose owning server is gone; returns them.

    A folder is stale when the pid in its ``owner`` file is not running, or (folders from before
    owner files) when it has no owner file, is older than a minute and nothing listens on its socket.
    Only this user's folders are considered.
    """
    import socket
    import time

    base = tmp or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(RUNNER_DIR_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != os.getuid():
            continue
        try:
            with open(os.path.join(path, _OWNER_FILE), encoding="ascii") as fh:
                owner: int | None = int(fh.read().strip())
        except (OSError, ValueError):
            owner = None
        if owner is not None:
            if _pid_alive(owner):
                continue
        else:
            if time.time() - info.st_mtime < _UNOWNED_GRACE:
                continue
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(0.2)
                probe.connect(os.path.join(path, "sock"))
                continue  # a runner still answers there
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d stale runner socket folder(s)", len(removed))
    return removed


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running process (a zombie, killed but not yet reaped, is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
