"""The interactive ``pollama run`` session: Ollama's REPL on prompt_toolkit.

Lines are read one at a time (``>>> ``, ``... `` inside a ``\"\"\"`` block); slash commands change the
session, anything else is a user message sent with the whole history to ``/api/chat``. Ctrl+C clears
the line (or stops an answer), Ctrl+D on an empty line and ``/bye`` leave, Ctrl+G edits the line in
an external editor. History lives in ``~/.ollama/history`` unless ``OLLAMA_NOHISTORY``/``/set nohistory``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prompt_toolkit.history import History

from pollama.cli._run import (
    ATTACHMENT_PATTERN,
    RunError,
    RunOptions,
    chat,
    check_attachments,
    extract_attachments,
    is_multimodal,
)
from pollama.client import Client, ClientError

_HISTORY_LIMIT = 100
_PLACEHOLDER = "Send a message (/? for help)"
_ALT_PLACEHOLDER = "Press Enter to send"


class _Interrupted(KeyboardInterrupt):
    """Ctrl+C at the prompt, with what had been typed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class _EditPrompt(Exception):
    """Ctrl+G: edit the current line in an external editor."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class LineHistory(History):
    """Ollama's readline history: one entry per line in a plain file, the last 100 kept.

    When disabled, entries are still recalled in this session but nothing is written.
    """

    def __init__(self, path: Path, *, enabled: bool = True, limit: int = _HISTORY_LIMIT) -> None:
        super().__init__()
        self.path = path
        self.enabled = enabled
        self.limit = limit

    def load_history_strings(self) -> Iterable[str]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        return list(reversed([line for line in lines if line][-self.limit :]))

    def store_string(self, string: str) -> None:
        if not self.enabled or not string or "\n" in string:
            return
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        lines = [line for line in lines if line]
        lines.append(string)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(line + "\n" for line in lines[-self.limit :]), encoding="utf-8")
        except OSError:
            pass


def _usage() -> None:
    err = sys.stderr
    err.write(
        "Available Commands:\n"
        "  /set            Set session variables\n"
        "  /show           Show model information\n"
        "  /load <model>   Load a session or model\n"
        "  /save <model>   Save your current session\n"
        "  /clear          Clear session context\n"
        "  /bye            Exit\n"
        "  /?, /help       Help for a command\n"
        "  /? shortcuts    Help for keyboard shortcuts\n"
        "\n"
        'Use """ to begin a multi-line message.\n'
    )


def _usage_multimodal() -> None:
    sys.stderr.write("Use /path/to/file to include .jpg, .png, or .webp images.\n")


def _usage_set() -> None:
    sys.stderr.write(
        "Available Commands:\n"
        "  /set parameter ...     Set a parameter\n"
        "  /set system <string>   Set system message\n"
        "  /set history           Enable history\n"
        "  /set nohistory         Disable history\n"
        "  /set wordwrap          Enable wordwrap\n"
        "  /set nowordwrap        Disable wordwrap\n"
        "  /set format json       Enable JSON mode\n"
        "  /set noformat          Disable formatting\n"
        "  /set verbose           Show LLM stats\n"
        "  /set quiet             Disable LLM stats\n"
        "  /set think             Enable thinking\n"
        "  /set nothink           Disable thinking\n"
        "\n"
    )


def _usage_shortcuts() -> None:
    sys.stderr.write(
        "Available keyboard shortcuts:\n"
        "  Ctrl + a            Move to the beginning of the line (Home)\n"
        "  Ctrl + e            Move to the end of the line (End)\n"
        "   Alt + b            Move back (left) one word\n"
        "   Alt + f            Move forward (right) one word\n"
        "  Ctrl + k            Delete the sentence after the cursor\n"
        "  Ctrl + u            Delete the sentence before the cursor\n"
        "  Ctrl + w            Delete the word before the cursor\n"
        "\n"
        "  Ctrl + l            Clear the screen\n"
        "  Ctrl + g            Open default editor to compose a prompt\n"
        "  Ctrl + c            Stop the model from responding\n"
        "  Ctrl + d            Exit ollama (/bye)\n"
        "\n"
    )


def _usage_show() -> None:
    sys.stderr.write(
        "Available Commands:\n"
        "  /show info         Show details for this model\n"
        "  /show license      Show model license\n"
        "  /show modelfile    Show Modelfile for this model\n"
        "  /show parameters   Show parameters for this model\n"
        "  /show system       Show system message\n"
        "  /show template     Show prompt template\n"
        "\n"
    )


def _usage_parameters() -> None:
    sys.stderr.write(
        "Available Parameters:\n"
        "  /set parameter seed <int>             Random number seed\n"
        "  /set parameter num_predict <int>      Max number of tokens to predict\n"
        "  /set parameter top_k <int>            Pick from top k num of tokens\n"
        "  /set parameter top_p <float>          Pick token based on sum of probabilities\n"
        "  /set parameter min_p <float>          Pick token based on top token probability * min_p\n"
        "  /set parameter num_ctx <int>          Set the context size\n"
        "  /set parameter temperature <float>    Set creativity level\n"
        "  /set parameter repeat_penalty <float> How strongly to penalize repetitions\n"
        "  /set parameter repeat_last_n <int>    Set how far back to look for repetitions\n"
        "  /set parameter num_gpu <int>          The number of layers to send to the GPU\n"
        "  /set parameter stop <string> <string> ...   Set the stop parameters\n"
        "\n"
    )


def _go_v(value: Any) -> str:
    """``%v`` of a typed parameter value (ints as ints, float32s shortest, lists ``[a b]``)."""
    from pollama.modelfile._gofmt import go_value

    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return go_value(value)


class Repl:
    """One interactive session over ``client``."""

    def __init__(self, client: Client, opts: RunOptions) -> None:
        from pollama.config import Settings

        self.client = client
        self.opts = opts
        self.settings = Settings.from_env()
        self.history = LineHistory(self.settings.home / "history", enabled=not self.settings.nohistory)
        self.session: Any = None

    # --- input -----------------------------------------------------------------------------------

    def _session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import FormattedText
        from prompt_toolkit.key_binding import KeyBindings

        bindings = KeyBindings()

        @bindings.add("c-c")
        def _(event: Any) -> None:
            event.app.exit(exception=_Interrupted(event.current_buffer.text))

        @bindings.add("c-g")
        def _(event: Any) -> None:
            event.app.exit(exception=_EditPrompt(event.current_buffer.text))

        self._placeholders = (
            FormattedText([("#888888", _PLACEHOLDER)]),
            FormattedText([("#888888", _ALT_PLACEHOLDER)]),
        )
        return PromptSession(
            history=self.history, key_bindings=bindings, enable_history_search=False, complete_while_typing=False
        )

    def _readline(self, alt: bool, prefill: str) -> str:
        if self.session is None:
            self.session = self._session()
        return str(
            self.session.prompt(
                "... " if alt else ">>> ", default=prefill, placeholder=self._placeholders[1 if alt else 0]
            )
        )

    # --- loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Read and handle lines until ``/bye`` or Ctrl+D."""
        opts = self.opts
        buf = ""
        multiline = ""  # "", "prompt" or "system"
        prefill = ""
        while True:
            try:
                line = self._readline(bool(multiline), prefill)
                prefill = ""
            except EOFError:
                return 0
            except _Interrupted as exc:
                prefill = ""
                if exc.text == "":
                    print("Use Ctrl + d or /bye to exit.")
                buf = ""
                multiline = ""
                continue
            except KeyboardInterrupt:
                prefill, buf, multiline = "", "", ""
                continue
            except _EditPrompt as exc:
                buf = ""
                try:
                    content = self._edit(exc.text)
                except (RunError, OSError) as err:
                    print(f"error: {err}", file=sys.stderr)
                    continue
                if content.strip():
                    prefill = content
                continue

            if multiline:
                before = line.removesuffix('"""')
                buf += before
                if before == line:
                    buf += "\n"
                    continue
                if multiline == "system":
                    self._set_system(buf)
                    buf = ""
                multiline = ""
            elif line.startswith('"""'):
                rest = line[3:]
                text = rest.removesuffix('"""')
                buf += text
                if text == rest:
                    buf += "\n"
                    multiline = "prompt"
            elif line.startswith("/list"):
                self._list(line.split()[1:])
                continue
            elif line.startswith("/load"):
                self._load(line.split())
                continue
            elif line.startswith("/save"):
                self._save(line.split())
                continue
            elif line.startswith("/clear"):
                opts.messages = [{"role": "system", "content": opts.system}] if opts.system else []
                print("Cleared session context")
                continue
            elif line.startswith("/set"):
                args = line.split()
                if len(args) > 1 and args[1] == "system" and len(args) > 2:
                    text = " ".join(args[2:])
                    if text.startswith('"""'):
                        text = text[3:]
                        if text.endswith('"""'):
                            text = text[:-3]
                        else:
                            buf = text + "\n"
                            multiline = "system"
                            continue
                    self._set_system(text)
                    continue
                self._set(args)
                continue
            elif line.startswith("/show"):
                self._show(line.split())
                continue
            elif line.startswith(("/help", "/?")):
                args = line.split()
                if len(args) > 1:
                    if args[1] in ("set", "/set"):
                        _usage_set()
                    elif args[1] in ("show", "/show"):
                        _usage_show()
                    elif args[1] in ("shortcut", "shortcuts"):
                        _usage_shortcuts()
                else:
                    _usage()
                    if opts.multimodal:
                        _usage_multimodal()
                    sys.stderr.write("\n")
                continue
            elif line.startswith(("/exit", "/bye")):
                return 0
            elif line.startswith("/"):
                first = line.split()[0]
                is_file = opts.multimodal and any(typed.startswith(first) for typed in ATTACHMENT_PATTERN.findall(line))
                if not is_file:
                    print(f"Unknown command '{first}'. Type /? for help")
                    continue
                buf += line
            else:
                buf += line

            if buf and not multiline:
                text, buf = buf, ""
                self._send(text)

    # --- turns -----------------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        opts = self.opts
        message: dict[str, Any] = {"role": "user", "content": text}
        try:
            if opts.multimodal:
                content, images = extract_attachments(text)
                message["content"] = content
                if images:
                    message["images"] = images
            else:
                check_attachments(opts, text)
        except (RunError, OSError) as exc:
            print(f"error: {exc}")
            return
        opts.messages.append(message)
        try:
            answer = chat(self.client, opts)
        except ClientError as exc:
            if "does not support thinking" in str(exc) or "invalid think value" in str(exc):
                print(f"error: {exc}")
                return
            raise
        if answer is not None:
            opts.messages.append(answer)

    def _set_system(self, text: str) -> None:
        opts = self.opts
        opts.system = text
        message = {"role": "system", "content": text}
        if opts.messages and opts.messages[-1].get("role") == "system":
            opts.messages[-1] = message
        else:
            opts.messages.append(message)
        print("Set system message.")

    # --- commands --------------------------------------------------------------------------------

    def _set(self, args: list[str]) -> None:
        opts = self.opts
        if len(args) < 2:
            _usage_set()
            return
        what = args[1]
        if what == "history":
            self.history.enabled = True
        elif what == "nohistory":
            self.history.enabled = False
        elif what == "wordwrap":
            opts.word_wrap = True
            print("Set 'wordwrap' mode.")
        elif what == "nowordwrap":
            opts.word_wrap = False
            print("Set 'nowordwrap' mode.")
        elif what == "verbose":
            opts.verbose = True
            print("Set 'verbose' mode.")
        elif what == "quiet":
            opts.verbose = False
            print("Set 'quiet' mode.")
        elif what == "think":
            level = args[2] if len(args) > 2 else ""
            opts.think = level or True
            opts.think_explicit = True
            self._warn_thinking()
            print(f"Set 'think' mode to '{level}'." if level else "Set 'think' mode.")
        elif what == "nothink":
            opts.think = False
            opts.think_explicit = True
            self._warn_thinking()
            print("Set 'nothink' mode.")
        elif what == "format":
            if len(args) < 3 or args[2] != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                opts.format = args[2]
                print(f"Set format to '{args[2]}' mode.")
        elif what == "noformat":
            opts.format = ""
            print("Disabled format.")
        elif what == "parameter":
            self._set_parameter(args)
        elif what == "system":
            _usage_set()
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def _set_parameter(self, args: list[str]) -> None:
        from pollama.errors import ParameterError
        from pollama.modelfile import PARAMETER_TYPES, ParamType, typed_parameters
        from pollama.modelfile._gofmt import go_quote

        if len(args) < 4:
            _usage_parameters()
            return
        name, values = args[2], args[3:]
        pairs = (
            [(name, v) for v in values] if PARAMETER_TYPES.get(name) is ParamType.STRING_LIST else [(name, values[0])]
        )
        warnings: list[str] = []
        try:
            typed = typed_parameters(pairs, warnings=warnings)
        except ParameterError as exc:
            print(f"Couldn't set parameter: {go_quote(str(exc))}")
            return
        for warning in warnings:
            print(warning, file=sys.stderr)
        print(f"Set parameter '{name}' to '{', '.join(values)}'")
        if name in typed:
            self.opts.options[name] = typed[name]

    def _warn_thinking(self) -> None:
        try:
            info = self.client.show(self.opts.model)
        except ClientError:
            return
        if "thinking" not in (info.get("capabilities") or []):
            print(f'warning: model "{self.opts.model}" does not support thinking output', file=sys.stderr)

    def _show(self, args: list[str]) -> None:
        from pollama.cli._show import render_show

        opts = self.opts
        if len(args) < 2:
            _usage_show()
            return
        extra: dict[str, Any] = {}
        if opts.system:
            extra["system"] = opts.system
        if opts.options:
            extra["options"] = opts.options
        try:
            resp = self.client.show(opts.model, **extra)
        except ClientError:
            print("error: couldn't get model")
            raise
        what = args[1]
        if what == "info":
            sys.stderr.write(render_show(resp))
        elif what == "license":
            print(resp.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            print(resp.get("modelfile", ""))
        elif what == "parameters":
            print("Model defined parameters:")
            params = resp.get("parameters") or ""
            if not params:
                print("  No additional parameters were specified for this model.")
            else:
                for line in params.split("\n"):
                    print(f"  {line}")
            print()
            if opts.options:
                print("User defined parameters:")
                for key, value in opts.options.items():
                    print(f"  {key:<30} {_go_v(value)}")
                print()
        elif what == "system":
            if opts.system:
                print(opts.system + "\n")
            elif resp.get("system"):
                print(str(resp["system"]) + "\n")
            else:
                print("No system message was specified for this model.")
        elif what == "template":
            print(resp.get("template") or "No prompt template was specified for this model.")
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")

    def _list(self, args: list[str]) -> None:
        from pollama.cli._output import human_bytes, human_time, parse_time, table

        rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
        for m in self.client.list():
            if args and not str(m["name"]).lower().startswith(args[0].lower()):
                continue
            size = "-" if m.get("remote_host") else human_bytes(int(m.get("size", 0)))
            rows.append([m["name"], m.get("digest", "")[:12], size, human_time(parse_time(m.get("modified_at", "")))])
        sys.stdout.write(table(rows))

    def _load(self, args: list[str]) -> None:
        from pollama.cli._run import load_model

        if len(args) != 2:
            print("Usage:\n  /load <modelname>")
            return
        previous = self.opts.copy()
        opts = self.opts
        opts.model = args[1]
        opts.messages = []
        print(f"Loading model '{opts.model}'")
        try:
            info = self.client.show(opts.model)
            if not opts.think_explicit:
                opts.think = True if "thinking" in (info.get("capabilities") or []) else None
            opts.parent_model = str((info.get("details") or {}).get("parent_model") or "")
            opts.multimodal = is_multimodal(info)
            opts.model_messages = [dict(m) for m in info.get("messages") or []]
            load_model(self.client, opts)
        except ClientError as exc:
            if "not found" in str(exc):
                print(f"Couldn't find model '{opts.model}'")
                self.opts = previous
                return
            if "does not support thinking" in str(exc):
                print(f"error: {exc}")
                return
            raise

    def _save(self, args: list[str]) -> None:
        from pollama.errors import InvalidModelName
        from pollama.names import parse_name

        if len(args) != 2:
            print("Usage:\n  /save <modelname>")
            return
        opts = self.opts
        parent = opts.parent_model
        if parent:
            try:
                parse_name(parent)
            except InvalidModelName:
                parent = ""
        request: dict[str, Any] = {"model": args[1], "from": parent or opts.model}
        if opts.system:
            request["system"] = opts.system
        if opts.options:
            request["parameters"] = opts.options
        messages = [*opts.model_messages, *opts.messages]
        if messages:
            request["messages"] = messages
        try:
            for _ in self.client.create(request):
                pass
        except ClientError as exc:
            if "invalid model name" in str(exc):
                print(f"error: The model name '{args[1]}' is invalid")
                return
            raise
        print(f"Created new model '{args[1]}'")

    def _edit(self, text: str) -> str:
        from pollama.cli._run import editor_command

        command = editor_command(self.settings)
        fd, name = tempfile.mkstemp(prefix="ollama-prompt-", suffix=".txt")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            if subprocess.call([*command, name]) != 0:
                raise RunError("editor exited with error")
            return Path(name).read_text(encoding="utf-8").rstrip("\n")
        finally:
            os.unlink(name)


def run_repl(client: Client, opts: RunOptions) -> int:
    """Run the interactive session until the user leaves; returns the exit status."""
    # the REPL's session state: a fresh copy so callers' options stay as they were
    return Repl(client, opts.copy()).run()
