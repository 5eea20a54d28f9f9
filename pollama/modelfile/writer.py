"""Writing Modelfiles back out: Ollama's ``Modelfile.String()`` and the ``/api/show`` texts (spec §2.7, §4.4).

``format_modelfile`` renders parsed commands the way Ollama's ``Command.String`` does;
``render_show_modelfile`` builds the ``modelfile`` field of ``/api/show`` (``show --modelfile``)
from a stored model, and ``render_parameters`` its ``parameters`` field.

The quoting is Ollama's and is reproduced as is, including where it does not round-trip: a value
is quoted only if it contains a newline or starts or ends with a space, so a value that itself
starts and ends with ``"``, ends with a tab, or contains both ``\"\"\"`` and a newline comes back
different when the output is parsed again. Numbers are printed as the ``float64`` Ollama reads from
JSON, so ``1000000`` is written ``1e+06``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pollama.modelfile._gofmt import go_syntax, go_value
from pollama.modelfile.parser import Command

DEFAULT_TEMPLATE = "{{ .Prompt }}"
_KEYWORD_COMMANDS = ("license", "template", "system", "adapter", "draft", "renderer", "parser", "requires")
_PARAMETER_COLUMN = 30


def quote(value: str) -> str:
    """Ollama's ``quote``: a value with a newline or an outer space is wrapped in ``"`` (or in
    triple quotes if it contains ``"``); anything else is written bare."""
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        if '"' in value:
            return f'"""{value}"""'
        return f'"{value}"'
    return value


def format_command(command: Command) -> str:
    """One instruction line (or quoted block) as Ollama's ``Command.String`` writes it."""
    name, args = command.name, command.args
    if name == "model":
        return f"FROM {args}"
    if name in _KEYWORD_COMMANDS:
        return f"{name.upper()} {quote(args)}"
    if name == "message":
        role, _, content = args.partition(": ")
        return f"MESSAGE {role} {quote(content)}"
    return f"PARAMETER {name} {quote(args)}"


def format_modelfile(commands: Iterable[Command]) -> str:
    """Ollama's ``Modelfile.String()``: every command on its own line, each ending with a newline."""
    return "".join(format_command(command) + "\n" for command in commands)


def parameter_commands(params: Mapping[str, Any]) -> list[Command]:
    """PARAMETER commands for a model's typed parameters (one per element of a list, e.g. ``stop``)."""
    commands: list[Command] = []
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            commands.extend(Command(key, go_value(item)) for item in value)
        else:
            commands.append(Command(key, go_value(value)))
    return commands


def render_parameters(params: Mapping[str, Any]) -> str:
    """The ``parameters`` text of ``/api/show``: ``%-30s %#v`` per value, lines joined by ``\\n``.

    A list (``stop``) gives one line per element. Strings are Go-quoted, numbers plain.
    """
    lines: list[str] = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        lines.extend(f"{key:<{_PARAMETER_COLUMN}} {go_syntax(item)}" for item in values)
    return "\n".join(lines)


def render_show_modelfile(
    *,
    short_name: str,
    model_path: str,
    adapters: Sequence[str] = (),
    projectors: Sequence[str] = (),
    template: str | None = None,
    system: str = "",
    parameters: Mapping[str, Any] | None = None,
    licenses: Sequence[str] = (),
    messages: Sequence[Mapping[str, Any]] = (),
    renderer: str = "",
    parser: str = "",
    requires: str = "",
    draft: str = "",
    jinja_template: bool = False,
) -> str:
    """The ``modelfile`` field of ``/api/show``, as Ollama's ``GetModelInfo`` writes it.

    Three comment lines and a blank line, then FROM the model blob, ADAPTERs, DRAFT, a FROM per
    projector, TEMPLATE (``{{ .Prompt }}`` when the model has none, as Ollama's default template),
    SYSTEM, RENDERER, PARSER, PARAMETERs, LICENSEs and MESSAGEs. Empty SYSTEM/RENDERER/PARSER are
    left out. ``requires`` is accepted but, as in Ollama (spec §2.7), not written.

    ``jinja_template`` says the model has no TEMPLATE and renders its prompts with the GGUF's Jinja
    chat template (native mode, spec §8.1): then no TEMPLATE line is written, so a model created
    again from this text keeps that template instead of getting ``{{ .Prompt }}``.
    """
    commands = [Command("model", model_path)]
    commands.extend(Command("adapter", path) for path in adapters)
    if draft:
        commands.append(Command("draft", draft))
    commands.extend(Command("model", path) for path in projectors)
    if template is not None:
        commands.append(Command("template", template))
    elif not jinja_template:
        commands.append(Command("template", DEFAULT_TEMPLATE))
    if system:
        commands.append(Command("system", system))
    if renderer:
        commands.append(Command("renderer", renderer))
    if parser:
        commands.append(Command("parser", parser))
    commands.extend(parameter_commands(parameters or {}))
    commands.extend(Command("license", text) for text in licenses)
    commands.extend(Command("message", f"{_field(m, 'role')}: {_field(m, 'content')}") for m in messages)
    header = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {short_name}\n\n"
    )
    return header + format_modelfile(commands)


def _field(message: Any, key: str) -> str:
    """A message's role or content, whether it is a mapping or an object with attributes."""
    value = message.get(key, "") if isinstance(message, Mapping) else getattr(message, key, "")
    return "" if value is None else str(value)
