"""The ``pollama`` command line: Ollama's verbs, each a thin call into ``pollama.client``.

Arguments are parsed here; talking to the server goes through ``Client``; what is printed lives in
``_output``. Any failure prints ``Error: <message>`` on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pollama import __version__

Handler = Callable[[argparse.Namespace], int]

_SHOW_FLAGS = ("license", "modelfile", "parameters", "system", "template")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as ``Error: ...`` (exit 1), like the rest of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(1)


def _settings() -> Any:
    from pollama.config import Settings

    return Settings.from_env()


def _client() -> Any:
    from pollama.cli.server import connect

    return connect(_settings())


# --- commands ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    from pollama.cli.server import run_server

    settings = _settings()
    if getattr(args, "ray", None):
        settings = dataclasses.replace(settings, ray_address=args.ray)
    run_server(settings)
    return 0


def cmd_version(_: argparse.Namespace) -> int:
    from pollama.cli.server import client_for
    from pollama.client import ClientError

    settings = _settings()
    with client_for(settings) as client:
        try:
            server = client.version()
        except ClientError:
            print("Warning: could not connect to a running Ollama instance", file=sys.stderr)
            print(f"Warning: client version is {__version__}", file=sys.stderr)
            return 0
    print(f"pollama version is {__version__} (Ollama API {server})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pollama.cli._output import human_bytes, human_time, parse_time, table

    models = _client().list()
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        if args.prefix and not m["name"].lower().startswith(args.prefix.lower()):
            continue
        size = "-" if m.get("remote_host") else human_bytes(int(m.get("size", 0)))
        rows.append([m["name"], m.get("digest", "")[:12], size, human_time(parse_time(m.get("modified_at", "")))])
    sys.stdout.write(table(rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from pollama.cli._show import render_show

    chosen = [flag for flag in _SHOW_FLAGS if getattr(args, flag)]
    if len(chosen) > 1:
        raise _usage(
            "only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified"
        )
    resp = _client().show(args.model, verbose=args.verbose)
    if chosen:
        print(resp.get(chosen[0], ""))
        return 0
    sys.stdout.write(render_show(resp, verbose=args.verbose))
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    _client().copy(args.source, args.destination)
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from pollama.cli._run import RunError, stop_model
    from pollama.client import ClientError

    client = _client()
    for name in args.models:
        try:
            stop_model(client, name)
        except (ClientError, RunError) as exc:
            if "not found" not in str(exc).lower() and "couldn't find model" not in str(exc):
                print(f"Warning: unable to stop model '{name}'", file=sys.stderr)
        client.delete(name)
        print(f"deleted '{name}'")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pollama.cli._run import run_command

    return run_command(_client(), args)


def cmd_ps(args: argparse.Namespace) -> int:
    from pollama.cli._output import ps_table

    sys.stdout.write(ps_table(_client().ps(), args.prefix))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from pollama.cli._run import stop_model

    stop_model(_client(), args.model)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from pollama.cli._create import create_from_modelfile

    create_from_modelfile(_client(), args.model, args.file, quantize=args.quantize, draft_quantize=args.draft_quantize)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pollama.cli._pull import pull_model

    pull_model(_client(), args.model, insecure=args.insecure)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pollama.cli._pull import push_model

    push_model(_client(), args.model, insecure=args.insecure)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pollama.cli._output import human_bytes
    from pollama.cli._progress import TransferProgress
    from pollama.names import parse_name
    from pollama.registry.oci_layout import export_model
    from pollama.store import ModelStore

    settings = _settings()
    store = ModelStore(settings.models, noprune=True)  # takes the store lock shared with a running server
    with TransferProgress() as progress:
        summary = _follow(export_model(store, parse_name(args.model), Path(args.output)), progress)
    print(f"exported {summary.models[0]} to {args.output} ({_blobs(summary.blobs)}, {human_bytes(summary.size)})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pollama.cli._output import human_bytes
    from pollama.cli._progress import TransferProgress
    from pollama.names import parse_name
    from pollama.registry.oci_layout import import_layout
    from pollama.store import ModelStore

    settings = _settings()
    store = ModelStore(settings.models, noprune=settings.noprune)  # takes the store lock shared with a server
    name = parse_name(args.name) if args.name else None
    with TransferProgress() as progress:
        summary = _follow(import_layout(store, Path(args.file), name), progress)
    print(
        f"imported {', '.join(summary.models)} from {args.file} ({_blobs(summary.blobs)}, {human_bytes(summary.size)})"
    )
    return 0


def _follow(work: Any, progress: Any) -> Any:
    """Show each progress line of the generator ``work`` and return what it returns."""
    while True:
        try:
            item = next(work)
        except StopIteration as done:
            return done.value
        progress.update(item.to_json())


def _blobs(count: int) -> str:
    return f"{count} blob" if count == 1 else f"{count} blobs"


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


# --- parser --------------------------------------------------------------------------------------


_RUN_ENV_HELP = """Environment Variables:
      OLLAMA_EDITOR              Path to the editor for interactive prompt editing (Ctrl+G)
      OLLAMA_HOST                IP Address for the ollama server (default 127.0.0.1:11434)
      OLLAMA_NOHISTORY           Do not preserve readline history
"""


def _serve_env_help() -> str:
    """The ``Environment Variables:`` block of ``serve --help``, from the settings table."""
    from pollama.config import SERVER_VARIABLES

    lines = ["Environment Variables:"]
    for name, default, meaning in SERVER_VARIABLES:
        shown = f" (default {default})" if default else ""
        lines.append(f"      {name:<26} {meaning}{shown}")
    return "\n".join(lines) + "\n"


# flags that may be given bare (``--think``) or with ``=value``, as cobra's NoOptDefVal allows
_OPTIONAL_VALUE_FLAGS = ("--think", "--truncate")


def _go_bool(text: str) -> bool:
    """A flag value read with Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise argparse.ArgumentTypeError(f'invalid argument "{text}": strconv.ParseBool: parsing "{text}": invalid syntax')


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    """Give bare ``--think``/``--truncate`` their implicit ``=true`` so they never swallow the next word."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        out.append(f"{arg}=true" if arg in _OPTIONAL_VALUE_FLAGS else arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = _Parser(prog="pollama", description="Large language model runner (Ollama-compatible)")
    parser.add_argument("-v", "--version", action="store_true", help="Show version information")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    p = sub.add_parser(
        "serve",
        aliases=["start"],
        help="Start pollama",
        epilog=_serve_env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ray", metavar="ADDRESS", default="", help="Place runners on a Ray cluster (auto: the local one)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("create", help="Create a model from a Modelfile")
    p.add_argument("model")
    p.add_argument("-f", "--file", default="", help='Name of the Modelfile (default "Modelfile")')
    p.add_argument("-q", "--quantize", default="", help="Quantize model to this level (e.g. q4_K_M)")
    p.add_argument("--draft-quantize", default="", help="Quantize draft model to this level (e.g. q8_0)")
    p.set_defaults(handler=cmd_create)

    p = sub.add_parser("show", help="Show information for a model")
    p.add_argument("model")
    for flag in _SHOW_FLAGS:
        p.add_argument(f"--{flag}", action="store_true", help=f"Show {flag} of a model")
    p.add_argument("-v", "--verbose", action="store_true", help="Show detailed model information")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser(
        "run", help="Run a model", epilog=_RUN_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--keepalive", default="", help="Duration to keep a model loaded (e.g. 5m)")
    p.add_argument("--verbose", action="store_true", help="Show timings for response")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.add_argument("--nowordwrap", action="store_true", help="Don't wrap words to the next line automatically")
    p.add_argument("--format", default="", help="Response format (e.g. json)")
    p.add_argument(
        "--think",
        default=None,
        metavar="[=LEVEL]",
        help="Enable thinking mode: true/false or high/medium/low/max for supported models",
    )
    p.add_argument("--hidethinking", action="store_true", help="Hide thinking output (if provided)")
    p.add_argument(
        "--truncate",
        default=None,
        type=_go_bool,
        metavar="[=BOOL]",
        help="For embedding models: truncate inputs exceeding context length (default: true). "
        "Set --truncate=false to error instead",
    )
    p.add_argument(
        "--dimensions",
        default=0,
        type=int,
        help="Truncate output embeddings to specified dimension (embedding models only)",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("stop", help="Stop a running model")
    p.add_argument("model")
    p.set_defaults(handler=cmd_stop)

    p = sub.add_parser("ps", help="List running models")
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(handler=cmd_ps)

    p = sub.add_parser("list", aliases=["ls"], help="List models")
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("cp", help="Copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(handler=cmd_cp)

    p = sub.add_parser("rm", help="Remove a model")
    p.add_argument("models", nargs="+")
    p.set_defaults(handler=cmd_rm)

    p = sub.add_parser("pull", help="Pull a model from a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry (plain http)")
    p.set_defaults(handler=cmd_pull)

    p = sub.add_parser("push", help="Push a model to a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry (plain http)")
    p.set_defaults(handler=cmd_push)

    p = sub.add_parser("export", help="Write a model to an OCI image layout tar file")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="The tar file to write")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("import", help="Install the models of an OCI image layout tar file")
    p.add_argument("file")
    p.add_argument("name", nargs="?", default="", help="Install the (single) model under this name")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("help", help="Help about any command")
    p.add_argument("topic", nargs="?")
    p.set_defaults(handler=lambda a: _help(parser, sub, a.topic))
    return parser


def _help(parser: argparse.ArgumentParser, sub: Any, topic: str | None) -> int:
    if topic and topic in sub.choices:
        sub.choices[topic].print_help()
    else:
        parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    from pollama.errors import PollamaError

    parser = build_parser()
    args, extra = parser.parse_known_args(_normalize_argv(sys.argv[1:] if argv is None else argv))
    if extra:
        if getattr(args, "handler", None) is cmd_run and not any(a.startswith("-") for a in extra):
            args.prompt = [*args.prompt, *extra]  # prompt words after flags, as cobra allows
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        return cmd_version(args)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except (PollamaError, _UsageError, OSError) as exc:
        print(f"Error: {_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)
