"""The runner subprocess: loads one model, runs the engine, answers requests on a Unix socket.

Started by the server as ``python -m pollama.runner --model PATH --socket PATH ...`` (plus
``--mmproj PATH`` for a model with a vision projector, ``--draft PATH --draft-max N`` for a draft model).
Once the model is loaded it prints one JSON line on stdout (``{"status": "ready", "vision": bool, ...}``)
and serves connections; a load that fails for a reason the user should see (a draft model whose
vocabulary does not match) prints an error event (``{"error", "kind"}``) instead and exits.
Each connection carries one request as a JSON line and gets JSON lines back:

* ``{"op": "completion", "prompt" | "tokens", "options": {...}, "stop": [...], ...}`` → ``{"content"}``
  lines, then ``{"done": true, "done_reason", counts and durations, "tokens"}``; closing the connection
  cancels the generation and frees its slot. ``"images": [base64, ...]`` sends images (the raw file
  bytes): the prompt then holds the projector's marker (``<__media__>``) once per image, in order, and
  the counts include each image's embeddings.
* ``{"op": "tokenize", "content", "add_special"}`` → ``{"tokens"}``; ``{"op": "detokenize", "tokens"}``
  → ``{"content"}``; ``{"op": "embed", "inputs": [[tokens], ...]}`` → ``{"embeddings", ...}``;
  ``{"op": "count", "texts": [...], "add_special"}`` → ``{"counts": [...]}`` (the token counts of
  many texts in one call, worked out in a worker thread);
  ``{"op": "health"}`` → ``{"status": "ok", "busy": n}``.
* Any failure → ``{"error": "...", "kind": "invalid_request" | "busy" | "canceled" | "internal"}``.

The runner exits when its stdin closes (the server went away) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pollama.errors import IncompatibleDraftModel, InvalidRequest
from pollama.runner.drafter import DraftModel, vocab_mismatch
from pollama.runner.engine import DRAFT_MAX, MISSING_PROJECTOR, CompletionJob, EmbedJob, Emit, Engine, check_tokens
from pollama.runner.native import (
    Bitmap,
    Context,
    ContextParams,
    LoraAdapter,
    MediaPrompt,
    Model,
    ModelParams,
    MtmdContext,
    SamplingParams,
)
from pollama.runner.protocol import error_event

log = logging.getLogger("pollama.runner")

RUNNER_DIR_PREFIX = "pollama-runner-"
"""Name prefix of the private folder the server makes for each runner's socket (the same as
``pollama.runner.client.RUNNER_DIR_PREFIX``; not imported, to keep this process's imports small)."""

_SAMPLING_FIELDS = {f for f in SamplingParams.__dataclass_fields__ if f != "grammar"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pollama-runner")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--socket", required=True)
    p.add_argument("--ctx-size", type=int, default=4096, help="context per slot (num_ctx)")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--n-gpu-layers", type=int, default=-1)
    p.add_argument("--main-gpu", type=int, default=0)
    p.add_argument("--no-mmap", action="store_true")
    p.add_argument("--mlock", action="store_true")
    p.add_argument("--lora", action="append", type=Path, default=[])
    p.add_argument("--mmproj", action="append", type=Path, default=[], help="multimodal projector GGUF")
    p.add_argument("--embedding", action="store_true")
    p.add_argument("--flash-attn", choices=("on", "off", "auto"), default="auto")
    p.add_argument("--kv-cache-type", default="f16")
    p.add_argument("--draft", type=Path, default=None, help="draft model GGUF for speculative decoding")
    p.add_argument("--draft-max", type=int, default=4, help="most draft-model tokens per step (draft_num_predict)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def sampling_from(options: dict[str, Any], grammar: str | None) -> SamplingParams:
    """Ollama options (already validated by the server) → sampler settings."""
    values = {k: options[k] for k in _SAMPLING_FIELDS if options.get(k) is not None}
    return SamplingParams(**values, grammar=grammar or None)


class RunnerServer:
    """Socket front end of one engine.

    Client-controlled work (parsing a large request, tokenizing a long prompt, converting a JSON
    schema, compiling a grammar into a sampler chain) runs in worker threads, never on this event
    loop and never under the engine's lock, so one big request cannot stall the other connections
    or the slots that are decoding. Tokenizing concurrently with decoding is safe: ``llama_tokenize``
    only reads the model's vocabulary (immutable once loaded, and ``const`` in llama.cpp's API) and
    never touches a context, which is also how llama-server tokenizes on its HTTP threads while its
    main loop decodes.
    """

    def __init__(self, model: Model, engine: Engine) -> None:
        self.model = model
        self.engine = engine
        self.mtmd = engine.mtmd
        # Events from the engine thread wait here and are handed to the event loop in one wake-up
        # per decode step rather than one per token per request (each wake-up is a syscall).
        self._outbox: list[tuple[asyncio.Queue[dict[str, Any]], dict[str, Any]]] = []
        self._outbox_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _post(self, queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
        """Called on the engine thread: queue ``event`` for delivery on the event loop."""
        with self._outbox_lock:
            wake = not self._outbox
            self._outbox.append((queue, event))
        if wake and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nobody is listening
                self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._outbox_lock:
            pending, self._outbox = self._outbox, []
        for queue, event in pending:
            queue.put_nowait(event)

    async def close(self) -> None:
        """Cancel every connection still being served and wait for them (shutdown)."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: one request line, its replies, then close."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._loop = asyncio.get_running_loop()
        try:
            line = await reader.readline()
            if not line:
                return
            request = json.loads(line) if len(line) < _INLINE_JSON else await asyncio.to_thread(json.loads, line)
            if not isinstance(request, dict):
                raise InvalidRequest("a runner request is a JSON object")
            op = request.get("op")
            if op == "completion":
                await self._completion(request, reader, writer)
            elif op == "embed":
                await self._embed(request, writer)
            elif op == "tokenize":
                tokens = await asyncio.to_thread(
                    self.model.tokenize, str(request.get("content", "")), add_special=bool(request.get("add_special"))
                )
                await _send(writer, {"tokens": tokens})
            elif op == "count":
                texts = [str(text) for text in request.get("texts") or []]
                special = bool(request.get("add_special", True))
                counts = await asyncio.to_thread(
                    lambda: [len(self.model.tokenize(t, add_special=special)) for t in texts]
                )
                await _send(writer, {"counts": counts})
            elif op == "detokenize":
                text = await asyncio.to_thread(self._detokenize, request.get("tokens", []))
                await _send(writer, {"content": text})
            elif op == "health":
                await _send(writer, {"status": "ok", "busy": self.engine.busy})
            else:
                raise InvalidRequest(f"unknown op {op!r}")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, InvalidRequest):
                log.exception("request failed")
            with contextlib.suppress(Exception):
                await _send(writer, error_event(exc))
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def _detokenize(self, tokens: Any) -> str:
        ids = _token_list(tokens, "tokens")
        check_tokens(ids, self.model.n_vocab)
        # Special tokens are written out, as Ollama's runner does: ``context`` sent back to
        # /api/generate is the conversation so far, template markup included.
        return self.model.detokenize(ids, special=True)

    def _build_completion(self, request: dict[str, Any], emit: Emit) -> tuple[CompletionJob, bytes]:
        """Worker thread: tokens, images, grammar and sampler chain for a completion, plus its first reply line."""
        media = self._media_prompt(request)
        try:
            return self._build_job(request, emit, media)
        except BaseException:
            if media is not None:
                media.close()
            raise

    def _media_prompt(self, request: dict[str, Any]) -> MediaPrompt | None:
        """The prompt split into text and image chunks when the request has images (else None)."""
        images = request.get("images")
        if not images:
            return None
        if self.mtmd is None or not self.mtmd.vision:
            raise InvalidRequest(MISSING_PROJECTOR)
        if not isinstance(images, list):
            raise InvalidRequest("images must be a list of base64 strings")
        if request.get("tokens") is not None:
            raise InvalidRequest("images need a text prompt, not tokens")
        if self.mtmd.mrope:
            raise InvalidRequest("image input is not supported yet for this model's projector (M-RoPE positions)")
        bitmaps: list[Bitmap] = []
        try:
            for number, item in enumerate(images, 1):
                try:
                    data = base64.b64decode(str(item), validate=True) if isinstance(item, str) else b""
                except (binascii.Error, ValueError):
                    raise InvalidRequest(f"failed to decode image {number}: invalid base64 data") from None
                bitmaps.append(self.mtmd.bitmap(data, number))
            return self.mtmd.tokenize(str(request.get("prompt", "")), bitmaps)
        finally:
            for bitmap in bitmaps:
                bitmap.close()

    def _build_job(self, request: dict[str, Any], emit: Emit, media: MediaPrompt | None) -> tuple[CompletionJob, bytes]:
        if media is not None:
            tokens = media.tokens
        elif request.get("tokens") is not None:
            tokens = _token_list(request["tokens"], "tokens")
        else:
            tokens = self.model.tokenize(str(request.get("prompt", "")), add_special=True, parse_special=True)
        options = request.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidRequest("options must be an object")
        grammar = request.get("grammar")
        if request.get("json_schema") is not None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            try:
                grammar = json_schema_to_gbnf(json.dumps(request["json_schema"]))
            except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
                raise InvalidRequest(f"invalid JSON schema in format: {exc}") from None
        try:
            job = CompletionJob(
                tokens=tokens,
                sampling=sampling_from(options, grammar),
                emit=emit,
                num_predict=int(options["num_predict"]) if options.get("num_predict") is not None else -1,
                num_keep=int(options["num_keep"]) if options.get("num_keep") is not None else 4,
                stop=tuple(str(s) for s in (options.get("stop") or []) if s),
                shift=bool(request.get("shift", True)),
                truncate=bool(request.get("truncate", True)),
                logprobs=bool(request.get("logprobs")),
                top_logprobs=int(request.get("top_logprobs") or 0),
                media=media,
                draft_max=max(0, int(options["draft_max"])) if options.get("draft_max") is not None else DRAFT_MAX,
                draft_min=max(0, int(options["draft_min"])) if options.get("draft_min") is not None else 0,
            )
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"invalid completion request: {exc}") from None
        self.engine.prepare(job)
        first: dict[str, Any] = {"prompt_tokens": len(tokens)}
        if request.get("return_tokens"):
            # The caller wants them (Ollama's ``context``): no second tokenization. Images' pseudo-tokens
            # are not vocabulary ids and stay here.
            first["tokens"] = [t for t in tokens if t >= 0] if media is not None else tokens
        return job, _line(first)

    async def _completion(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gone = loop.create_task(reader.read())  # EOF = the client went away
        submitted: CompletionJob | None = None
        try:
            job, first = await asyncio.to_thread(
                self._build_completion, request, lambda event: self._post(events, event)
            )
            submitted = job
            if gone.done():
                self.engine.cancel(job)
                return
            self.engine.submit(job)
            writer.write(first)
            while True:
                if events.empty():
                    await writer.drain()
                    getter = loop.create_task(events.get())
                    done, _ = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        self.engine.cancel(job)
                        return
                    event = getter.result()
                else:
                    event = events.get_nowait()
                if gone.done():
                    self.engine.cancel(job)
                    return
                # The reader fell behind (or several steps ended at once): the text waiting goes as one line.
                while "content" in event and not events.empty():
                    following = events.get_nowait()
                    if "content" not in following:
                        writer.write(_line(event))
                        event = following
                        break
                    event = _merge(event, following)
                writer.write(_line(event))
                if event.get("done") or "error" in event:
                    await writer.drain()
                    return
        except (ConnectionError, asyncio.CancelledError):
            if submitted is not None:
                self.engine.cancel(submitted)
            raise
        finally:
            gone.cancel()

    async def _embed(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[dict[str, Any]] = loop.create_future()
        inputs = request.get("inputs", [])
        if not isinstance(inputs, list):
            raise InvalidRequest("inputs must be a list of token lists")

        def emit(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(_settle, result, event)

        job = EmbedJob(inputs=[_token_list(toks, "inputs") for toks in inputs], emit=emit)
        await asyncio.to_thread(self.engine.prepare, job)
        self.engine.submit(job)
        try:
            await _send(writer, await result)
        finally:
            self.engine.cancel(job)


_INLINE_JSON = 64 * 1024
"""Request lines shorter than this are parsed on the loop; longer ones in a worker thread."""


def _token_list(value: Any, name: str) -> list[int]:
    """A JSON array of token ids (ints; ``check_tokens`` bounds them by the vocabulary)."""
    if not isinstance(value, list):
        raise InvalidRequest(f"{name} must be a list of token ids")
    return value


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _merge(event: dict[str, Any], following: dict[str, Any]) -> dict[str, Any]:
    """Two content events as one (text joined, logprob entries in order)."""
    merged: dict[str, Any] = {"content": event["content"] + following["content"]}
    probs = [*event.get("logprobs", ()), *following.get("logprobs", ())]
    if probs:
        merged["logprobs"] = probs
    return merged


def _settle(future: asyncio.Future[dict[str, Any]], event: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(event)


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(_line(obj))
    await writer.drain()


async def _serve(args: argparse.Namespace, model: Model, engine: Engine, ready: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front = RunnerServer(model, engine)
    server = await asyncio.start_unix_server(front.handle, path=args.socket, limit=64 * 1024 * 1024)
    os.chmod(args.socket, 0o600)
    print(json.dumps(ready), flush=True)

    async def watch_stdin() -> None:
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        await stdin.read()
        stop.set()

    watcher = loop.create_task(watch_stdin())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        server.close()
        # Stop the engine first (it fails what is still running and waits for the last decode),
        # then end the connections, so every client gets its error line before the socket closes.
        await asyncio.to_thread(engine.stop)
        await front.close()
        await asyncio.gather(watcher, return_exceptions=True)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (as uvicorn picks it for the server): every token
    crosses this loop, and uvloop's wake-ups and socket writes cost about half of asyncio's, CPU
    time taken from llama.cpp's threads on a machine with few cores."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Entry point of the runner subprocess."""
    args = parse_args(argv)
    # The engine thread wants the GIL back the moment llama_decode returns; with the default 5 ms
    # switch interval it could wait that long behind the socket thread on every decode step.
    sys.setswitchinterval(0.0005)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="runner: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    model = Model(_model_params(args, args.model))
    adapters = [LoraAdapter(model, path) for path in args.lora]
    if len(args.mmproj) > 1:
        log.warning("only the first projector is used (%d given)", len(args.mmproj))
    mtmd = None
    if args.mmproj and not args.embedding:
        mtmd = MtmdContext(model, args.mmproj[0], n_threads=args.threads, use_gpu=args.n_gpu_layers != 0)
    parallel = 1 if args.embedding else max(1, args.parallel)
    num_ctx = max(4, args.ctx_size)
    batch = min(2048, num_ctx) if args.embedding else min(max(1, args.batch_size), num_ctx)
    flash = {"on": True, "off": False}.get(args.flash_attn)
    context = _context_params(args, num_ctx=num_ctx, parallel=parallel, batch=batch, flash=flash)
    ctx = Context(model, dataclasses.replace(context, embeddings=args.embedding), adapters)
    drafter = None
    if args.draft is not None and args.draft_max > 0 and not args.embedding:
        try:
            drafter = _load_draft(args, model, context)
        except IncompatibleDraftModel as exc:
            print(json.dumps(error_event(exc)), flush=True)  # the server reads it as the load's error
            if mtmd is not None:
                mtmd.close()
            ctx.close()
            for adapter in adapters:
                adapter.close()
            model.close()
            return 1
    engine = Engine(model, ctx, num_ctx=num_ctx, num_parallel=parallel, num_batch=batch, mtmd=mtmd, drafter=drafter)
    engine.start()
    ready = {
        "status": "ready",
        "pid": os.getpid(),
        "n_ctx": num_ctx,
        "parallel": parallel,
        "model_size": model.size,
        "n_ctx_train": model.n_ctx_train,
        "vision": bool(mtmd is not None and mtmd.vision),
        "draft": drafter is not None,
    }
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(args, model, engine, ready))
    finally:
        if engine.stop():  # only once no decode can still be using them
            if mtmd is not None:
                mtmd.close()  # before the model it was loaded against
            ctx.close()
            if drafter is not None:
                drafter.close()
            for adapter in adapters:
                adapter.close()
            model.close()
        _remove_socket(args.socket)
    return 0


def _model_params(args: argparse.Namespace, path: Path) -> ModelParams:
    """Load options for the weights at ``path`` (the model or its draft) from the command line."""
    return ModelParams(
        path=path,
        n_gpu_layers=args.n_gpu_layers,
        main_gpu=args.main_gpu,
        use_mmap=not args.no_mmap,
        use_mlock=args.mlock,
    )


def _context_params(
    args: argparse.Namespace, *, num_ctx: int, parallel: int, batch: int, flash: bool | None
) -> ContextParams:
    """The KV cache and compute options of a context with a sequence per slot (the model's, its draft's)."""
    return ContextParams(
        n_ctx=num_ctx * parallel,
        n_batch=batch,
        n_seq_max=parallel,
        n_threads=args.threads,
        flash_attention=flash,
        kv_cache_type=args.kv_cache_type,
    )


def _load_draft(args: argparse.Namespace, model: Model, context: ContextParams) -> DraftModel:
    """The draft model with a context of one sequence per slot; ``IncompatibleDraftModel`` when its
    vocabulary is not the target's (its drafts would be token ids meaning other text)."""
    draft = Model(_model_params(args, args.draft))
    try:
        reason = vocab_mismatch(model, draft)
        if reason:
            raise IncompatibleDraftModel(f"the draft model is not compatible with the model: {reason}")
        ctx = Context(draft, context)
    except BaseException:
        draft.close()
        raise
    return DraftModel(draft, ctx, n_max=args.draft_max, num_parallel=context.n_seq_max, num_batch=context.n_batch)


def _remove_socket(path: str) -> None:
    """Remove the socket and, if the server made a private folder for it, that folder too.

    The server removes the folder when it stops a runner; this covers a server that was killed
    (the runner notices its stdin closing and exits on its own).
    """
    with contextlib.suppress(OSError):
        os.unlink(path)
    folder = os.path.dirname(path)
    if os.path.basename(folder).startswith(RUNNER_DIR_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
