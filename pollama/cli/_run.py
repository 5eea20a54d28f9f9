"""``pollama run``: one-shot generation, the answer streamed as Ollama's CLI prints it, and the shared
pieces the REPL uses (chat turns, loading a model, attachments).

Non-interactive runs (a prompt argument, piped stdin, or stdout not a terminal) make one
``/api/generate`` call; the interactive REPL (``_repl``) sends the whole history to ``/api/chat`` each
turn. Both print thinking as ``Thinking...`` / ``...done thinking.``, word-wrap at the terminal width,
stop cleanly on Ctrl+C (the HTTP stream is closed) and print the ``--verbose`` stats on stderr.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pollama.cli._output import (
    Spinner,
    WordWrapper,
    format_stats,
    thinking_closing,
    thinking_opening,
    tool_calls_text,
)
from pollama.client import Client, ClientError
from pollama.errors import PollamaError

THINK_LEVELS = ("high", "medium", "low", "max")
_MAX_ATTACHMENT = 100 * 1024 * 1024
_MEDIA_EXT = r"\.(?i:jpg|jpeg|png|webp|wav)\b"
# Ollama's pattern (file:// URLs; paths from /, ./, .\, \ or a drive letter, spaces allowed), plus
# ../ and ~/ (or ~user/), which Ollama's would cut short or miss.
ATTACHMENT_PATTERN = re.compile(
    rf"(?:file://\S+?{_MEDIA_EXT})|(?:(?:[a-zA-Z]:)?(?:~[^\s/\\'\"]*/|\.\./|\./|\.\\|/|\\)[\S\\ ]+?{_MEDIA_EXT})"
)
_UNESCAPES = (
    ("\\ ", " "),
    ("\\(", "("),
    ("\\)", ")"),
    ("\\[", "["),
    ("\\]", "]"),
    ("\\{", "{"),
    ("\\}", "}"),
    ("\\$", "$"),
    ("\\&", "&"),
    ("\\;", ";"),
    ("\\'", "'"),
    ("\\\\", "\\"),
    ("\\*", "*"),
    ("\\?", "?"),
    ("\\~", "~"),
    ("'\\''", "'"),
)


class RunError(PollamaError):
    """A ``run`` failure the CLI prints as ``Error: <message>``."""


@dataclass
class RunOptions:
    """One run or REPL session (Ollama's ``runOptions``)."""

    model: str
    parent_model: str = ""
    prompt: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    model_messages: list[dict[str, Any]] = field(default_factory=list)
    word_wrap: bool = True
    format: str = ""
    system: str = ""
    images: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    multimodal: bool = False
    keep_alive: str | int | None = None
    think: bool | str | None = None
    think_explicit: bool = False
    hide_thinking: bool = False
    verbose: bool = False

    def copy(self) -> RunOptions:
        """A copy whose lists and dicts can be changed without touching this one."""
        return replace(
            self,
            messages=list(self.messages),
            model_messages=list(self.model_messages),
            images=list(self.images),
            options=dict(self.options),
        )


# --- flags -----------------------------------------------------------------------------------------


def parse_think_flag(value: str | None) -> bool | str | None:
    """``--think[=v]``: ``None`` when absent, else ``True``/``False`` or a level."""
    if value is None:
        return None
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    if value in THINK_LEVELS:
        return value
    raise RunError(f'invalid value for --think: "{value}" (must be true, false, high, medium, low, or max)')


def keep_alive_value(text: str) -> str | int | None:
    """``--keepalive``: a Go duration, sent as Go's ``api.Duration`` JSON (``"5m0s"``, ``-1`` if negative)."""
    if not text:
        return None
    from pollama.duration import format_go_duration, parse_go_duration

    try:
        ns = parse_go_duration(text)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    if ns < 0:
        return -1
    return format_go_duration(ns / 1e9)


def _format_value(text: str) -> Any:
    """``--format``: ``json`` or a JSON Schema object; anything else is refused with the accepted forms."""
    if not text:
        return None
    if text == "json":
        return "json"
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raise RunError(f'invalid format: "{text}"; expected "json" or a valid JSON Schema object')


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (ValueError, AttributeError):
        return False


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (ValueError, AttributeError):
        return False


# --- the command -----------------------------------------------------------------------------------


def run_command(client: Client, args: Any) -> int:
    """``pollama run MODEL [PROMPT...]`` with its flags (``args`` from argparse)."""
    think = parse_think_flag(args.think)
    opts = RunOptions(
        model=args.model,
        format=args.format or "",
        keep_alive=keep_alive_value(args.keepalive),
        think=think,
        think_explicit=think is not None,
        hide_thinking=args.hidethinking,
        verbose=args.verbose,
        word_wrap=not args.nowordwrap,
    )
    interactive = True
    prompts = list(args.prompt or [])
    if not _stdin_is_tty():
        data = sys.stdin.read()
        if data:
            prompts.insert(0, data)
        interactive = False
    opts.prompt = " ".join(prompts)
    if prompts or not _stdout_is_tty():
        interactive = False

    info = show_or_pull(client, opts.model, insecure=args.insecure)
    capabilities = list(info.get("capabilities") or [])
    if not opts.think_explicit:
        opts.think = True if "thinking" in capabilities else None
    opts.multimodal = is_multimodal(info)
    opts.parent_model = str((info.get("details") or {}).get("parent_model") or "")

    if "embedding" in capabilities:
        if not opts.prompt:
            raise RunError(f'embedding models require input text. Usage: ollama run {opts.model} "your text here"')
        embed(client, opts, truncate=args.truncate, dimensions=args.dimensions)
        return 0

    if interactive:
        load_model(client, opts)
        opts.model_messages = [dict(m) for m in info.get("messages") or []]
        for message in opts.model_messages:
            if message.get("role") == "user":
                print(f">>> {message.get('content', '')}")
            elif message.get("role") == "assistant":
                WordWrapper().write(str(message.get("content", "")), opts.word_wrap)
                print("\n")
        from pollama.cli._repl import run_repl

        return run_repl(client, opts)
    generate(client, opts)
    return 0


def is_multimodal(info: dict[str, Any]) -> bool:
    """Whether a model takes images/audio (capabilities, or older servers' projector/vision keys)."""
    capabilities = info.get("capabilities") or []
    if "vision" in capabilities or "audio" in capabilities:
        return True
    if info.get("projector_info"):
        return True
    return any(".vision." in key for key in info.get("model_info") or {})


def show_or_pull(client: Client, name: str, *, insecure: bool = False) -> dict[str, Any]:
    """``/api/show`` for ``name``, pulling the model first if the server does not have it."""
    try:
        return client.show(name)
    except ClientError as exc:
        if exc.status != 404:
            raise
    pull_model(client, name, insecure=insecure)
    return client.show(name)


def pull_model(client: Client, name: str, *, insecure: bool = False) -> None:
    """Pull ``name`` with ``pollama pull``'s progress; a server without ``/api/pull`` gives Ollama's
    not-found error."""
    from pollama.cli._pull import pull_model as pull

    try:
        pull(client, name, insecure=insecure)
    except ClientError as exc:
        if exc.status in (404, 405) and str(exc) in ("404 page not found", "405 method not allowed"):
            raise RunError("pull model manifest: file does not exist") from None
        raise


def embed(client: Client, opts: RunOptions, *, truncate: bool | None, dimensions: int) -> None:
    """Print the prompt's embedding as a JSON array."""
    request: dict[str, Any] = {"model": opts.model, "input": opts.prompt}
    if opts.keep_alive is not None:
        request["keep_alive"] = opts.keep_alive
    if truncate is not None:
        request["truncate"] = truncate
    if dimensions and dimensions > 0:
        request["dimensions"] = dimensions
    embeddings = client.embed(request).get("embeddings") or []
    if not embeddings:
        raise RunError("no embeddings returned")
    print("[" + ",".join(_json_float(float(x)) for x in embeddings[0]) + "]")


def _json_float(value: float) -> str:
    """A float as Go's ``encoding/json`` writes it (no ``.0``, exponent only below 1e-6 or from 1e21)."""
    from decimal import Decimal

    if value == 0:
        return "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        mantissa, _, exponent = f"{value!r}".partition("e")
        if not exponent:
            mantissa, _, exponent = f"{value:e}".partition("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
        sign = "-" if exponent.startswith("-") else "+"
        return f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


# --- loading, stopping -----------------------------------------------------------------------------


def load_model(client: Client, opts: RunOptions) -> None:
    """Ollama's ``loadOrUnloadModel``: ``/api/show``, then an empty ``/api/generate`` (load, or unload
    with ``keep_alive`` 0). Remote models are not loaded."""
    spinner = Spinner()
    try:
        info = client.show(opts.model)
        if info.get("remote_host"):
            return
        request: dict[str, Any] = {"model": opts.model}
        if opts.keep_alive is not None:
            request["keep_alive"] = opts.keep_alive
        if opts.think is not None:
            request["think"] = opts.think
        for _ in client.generate(request):
            pass
    finally:
        spinner.stop()


def stop_model(client: Client, name: str) -> None:
    """``pollama stop``: unload ``name`` now."""
    try:
        load_model(client, RunOptions(model=name, keep_alive=0))
    except ClientError as exc:
        if "not found" in str(exc):
            raise RunError(f'couldn\'t find model "{name}" to stop') from None
        raise


# --- attachments -------------------------------------------------------------------------------------


def _unescape(path: str) -> str:
    for escaped, plain in _UNESCAPES:
        path = path.replace(escaped, plain)
    return path


def _normalize(typed: str) -> str:
    """Ollama's ``NormalizePath``: quotes trimmed, shell escapes undone, ``file://`` URLs made paths."""
    path = _unescape(typed.strip('"'))
    if path[:7].lower() == "file://":
        from urllib.parse import unquote, urlsplit

        url = urlsplit(path)
        if url.netloc in ("", "localhost"):
            return unquote(url.path)
    return path


def _open_path(path: str) -> Path:
    return Path(path).expanduser()


def _sniff(head: bytes) -> str:
    """The few answers of Go's ``http.DetectContentType`` that matter here."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:14] == b"WEBPVP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wave"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if b"\x00" in head:
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def _looks_typed(text: str, start: int) -> bool:
    """Whether a match starts a word (not the middle of ``https://host/a.png``): then a missing
    file is an error rather than text."""
    return start == 0 or text[start - 1].isspace() or text[start - 1] in "'\"("


def _find(text: str) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """The attachments named in ``text`` as ``(typed, normalized, path)``, and the missing paths.

    A match that is not a file may have swallowed words before the real path (``the file /x and
    ./a.png``: the pattern allows spaces), so later starts inside it are tried before giving up.
    """
    found: list[tuple[str, str, Path]] = []
    missing: list[str] = []
    pos = 0
    while (match := ATTACHMENT_PATTERN.search(text, pos)) is not None:
        start = match.start()
        hit = None
        while (candidate := ATTACHMENT_PATTERN.search(text, start)) is not None and candidate.start() < match.end():
            if _open_path(_normalize(candidate.group(0))).is_file():
                hit = candidate
                break
            start = candidate.start() + 1
        if hit is not None:
            typed = hit.group(0)
            normalized = _normalize(typed)
            found.append((typed, normalized, _open_path(normalized)))
            pos = hit.end()
        else:
            if _looks_typed(text, match.start()):
                missing.append(_normalize(match.group(0)))
            pos = match.end()
    return found, missing


def attachment_paths(text: str) -> list[tuple[str, Path]]:
    """Paths of existing files named in ``text`` (as typed, and where they are)."""
    return [(typed, path) for typed, _, path in _find(text)[0]]


def _file_error(path: str, reason: str) -> RunError:
    from pollama.template.gostrconv import quote

    return RunError(f"couldn't process file {quote(path)}: {reason}")


def extract_attachments(text: str) -> tuple[str, list[str]]:
    """Take image/audio file paths out of ``text``: returns the remaining text and the files as base64.

    Prints ``Added image '<path>'`` (or ``audio``) on stderr for each, as Ollama does. A path that
    names no file, a file that is not JPEG/PNG/WebP/WAV, or one over 100 MB is a ``RunError``
    (``couldn't process file "<path>": ...``), raised before anything is printed or sent.
    """
    found, missing = _find(text)
    if missing:
        raise _file_error(missing[0], f"open {missing[0]}: no such file or directory")
    loaded: list[tuple[str, str, str, bytes]] = []
    for typed, normalized, path in found:
        try:
            with path.open("rb") as fh:
                kind = _sniff(fh.read(512))
                if kind not in ("image/jpeg", "image/png", "image/webp", "audio/wave"):
                    raise _file_error(normalized, f"invalid file type: {kind}")
                if path.stat().st_size > _MAX_ATTACHMENT:
                    raise _file_error(normalized, "file size exceeds maximum limit (100MB)")
                fh.seek(0)
                data = fh.read()
        except OSError as exc:
            raise _file_error(normalized, f"open {normalized}: {(exc.strerror or str(exc)).lower()}") from None
        loaded.append((typed, normalized, "audio" if kind.startswith("audio/") else "image", data))
    images: list[str] = []
    for typed, normalized, label, data in loaded:
        print(f"Added {label} '{normalized}'", file=sys.stderr)
        for form in (f"'{normalized}'", f"'{typed}'", f'"{normalized}"', f'"{typed}"', typed):
            text = text.replace(form, "")
        images.append(base64.b64encode(data).decode("ascii"))
    return text.strip(), images


def check_attachments(opts: RunOptions, text: str) -> None:
    """A prompt naming an image for a model that cannot see is an error, not silently text."""
    if opts.multimodal:
        return
    found = attachment_paths(text)
    if found:
        raise RunError(
            f"model '{opts.model}' does not support image or audio input "
            f"(remove '{found[0][0]}' from the prompt or use a vision model)"
        )


# --- streaming -------------------------------------------------------------------------------------


class _AnswerPrinter:
    """Prints a stream of thinking/content/tool-call deltas the way Ollama's CLI does."""

    def __init__(self, opts: RunOptions, *, plain: bool) -> None:
        self.opts = opts
        self.plain = plain
        self.wrapper = WordWrapper()
        self.thinking: list[str] = []
        self.content: list[str] = []
        self.think_open = False

    def feed(self, thinking: str, content: str, tool_calls: list[dict[str, Any]]) -> None:
        out = sys.stdout
        if thinking and not self.opts.hide_thinking:
            if not self.think_open:
                out.write(thinking_opening(self.plain))
                self.think_open = True
            self.thinking.append(thinking)
            self.wrapper.write(thinking, self.opts.word_wrap)
        elif thinking:
            self.thinking.append(thinking)
        if self.think_open and (content or tool_calls):
            if not "".join(self.thinking).endswith("\n"):
                out.write("\n")
            out.write(thinking_closing(self.plain))
            self.think_open = False
            self.wrapper.reset()
        self.content.append(content)
        self.wrapper.write(content, self.opts.word_wrap)
        if tool_calls:
            out.write(tool_calls_text(tool_calls, self.plain))
        out.flush()


def _consume(
    stream: Iterator[dict[str, Any]], printer: _AnswerPrinter, spinner: Spinner, delta: Any
) -> dict[str, Any] | None:
    """Print every chunk of ``stream``; returns the last chunk, or ``None`` if Ctrl+C stopped it."""
    latest: dict[str, Any] = {}
    try:
        for chunk in stream:
            thinking, content, tool_calls = delta(chunk)
            if content or not printer.opts.hide_thinking:
                spinner.stop()
            latest = chunk
            printer.feed(thinking, content, tool_calls)
    except KeyboardInterrupt:
        return None
    finally:
        spinner.stop()
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # closes the HTTP response, which cancels the request on the server
    return latest


def generate(client: Client, opts: RunOptions) -> None:
    """One non-interactive ``/api/generate`` call, streamed to stdout; stats to stderr if verbose."""
    plain = not _stdout_is_tty()
    if opts.multimodal:
        opts.prompt, opts.images = extract_attachments(opts.prompt)
    else:
        check_attachments(opts, opts.prompt)
    request: dict[str, Any] = {"model": opts.model, "prompt": opts.prompt}
    if opts.images:
        request["images"] = opts.images
    fmt = _format_value(opts.format)
    if fmt is not None:
        request["format"] = fmt
    if opts.system:
        request["system"] = opts.system
    if opts.options:
        request["options"] = opts.options
    if opts.keep_alive is not None:
        request["keep_alive"] = opts.keep_alive
    if opts.think is not None:
        request["think"] = opts.think
    printer = _AnswerPrinter(opts, plain=plain)
    spinner = Spinner()
    try:
        latest = _consume(
            client.generate(request),
            printer,
            spinner,
            lambda c: (c.get("thinking") or "", c.get("response") or "", c.get("tool_calls") or []),
        )
    except KeyboardInterrupt:
        return
    if latest is None:
        return
    if opts.prompt:
        sys.stdout.write("\n\n")
        sys.stdout.flush()
    if latest.get("done") and opts.verbose:
        sys.stderr.write(format_stats(latest))
        sys.stderr.flush()


def chat(client: Client, opts: RunOptions) -> dict[str, Any] | None:
    """One REPL turn: ``/api/chat`` with the session history; returns the assistant message, or
    ``None`` if Ctrl+C stopped it."""
    request: dict[str, Any] = {"model": opts.model, "messages": opts.messages}
    fmt = _format_value(opts.format)
    if fmt is not None:
        request["format"] = fmt
    if opts.options:
        request["options"] = opts.options
    if opts.think is not None:
        request["think"] = opts.think
    if opts.keep_alive is not None:
        request["keep_alive"] = opts.keep_alive
    printer = _AnswerPrinter(opts, plain=False)
    spinner = Spinner()
    role = "assistant"

    def delta(chunk: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
        nonlocal role
        message = chunk.get("message") or {}
        role = message.get("role") or role
        return message.get("thinking") or "", message.get("content") or "", message.get("tool_calls") or []

    try:
        latest = _consume(client.chat(request), printer, spinner, delta)
    except KeyboardInterrupt:
        latest = None
    except ClientError as exc:
        if "upstream error" in str(exc):
            print("An error occurred while processing your message. Please try again.\n")
            return None
        raise
    if latest is None:
        if printer.content or printer.thinking:
            sys.stdout.write("\n")  # the next prompt starts on its own line
            sys.stdout.flush()
        return None
    if opts.messages:
        sys.stdout.write("\n\n")
        sys.stdout.flush()
    if opts.verbose:
        sys.stderr.write(format_stats(latest))
        sys.stderr.flush()
    message: dict[str, Any] = {"role": role, "content": "".join(printer.content)}
    thinking = "".join(printer.thinking)
    if thinking:
        message["thinking"] = thinking
    return message


def editor_command(settings: Any) -> list[str]:
    """The external editor for Ctrl+G: ``OLLAMA_EDITOR``, ``$VISUAL``, ``$EDITOR`` or ``vi``."""
    import shutil

    editor = getattr(settings, "editor", "") or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    parts = editor.split()
    if not parts or shutil.which(parts[0]) is None:
        name = parts[0] if parts else editor
        raise RunError(f'editor "{name}" not found, set OLLAMA_EDITOR to the path of your preferred editor')
    return parts
