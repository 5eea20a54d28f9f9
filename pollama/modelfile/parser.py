"""Reading Modelfiles: bytes or text in, Ollama's ``[Command(name, args), ...]`` out (spec §4.1).

This is a port of the character-level state machine in Ollama's ``parser.ParseFile``, quirks
included, because Modelfiles that work with Ollama must parse the same way here:

* input is UTF-8; a UTF-8 BOM is dropped and a UTF-16 LE/BE BOM switches to UTF-16;
* keywords are ASCII letters, case-insensitive, and must be followed by a space or tab;
* a value runs to the end of the line once its trimmed text is unquoted or a complete
  ``"..."``/``\"\"\"...\"\"\"`` string (no escapes; one pair of quotes removed);
* characters Go's ``strconv.IsPrint`` rejects are dropped everywhere (space, tab and line breaks
  inside values are kept);
* line numbers in errors count every ``\\r`` and every ``\\n``.

Errors are :class:`~pollama.errors.ModelfileError` with Go's exact message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pollama.errors import ModelfileError

COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")

INVALID_COMMAND = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS[:-1]) + f', or "{COMMANDS[-1]}"'
INVALID_MESSAGE_ROLE = 'message role must be one of "system", "user", or "assistant"'
UNEXPECTED_EOF = "unexpected EOF"
MISSING_FROM = "no FROM line"

_BLANK = " \t"
_NEWLINE = "\r\n"
_TRIM = " \t\r\n"  # the only whitespace a value buffer can hold (other spaces are not printable)


@dataclass(frozen=True)
class Command:
    """One Modelfile instruction as Ollama stores it.

    ``name`` is ``"model"`` for FROM, the lower-case keyword for the other instructions, or the
    parameter name (case kept) for PARAMETER. ``args`` is the value; for MESSAGE it is
    ``"<role>: <content>"``.
    """

    name: str
    args: str


class _State(enum.Enum):
    NIL = enum.auto()
    NAME = enum.auto()
    VALUE = enum.auto()
    PARAMETER = enum.auto()
    MESSAGE = enum.auto()
    COMMENT = enum.auto()


class _UnexpectedEOF(Exception):
    """Raised by ``_step`` where Go's ``parseRuneForState`` returns ``io.ErrUnexpectedEOF``."""


class _InvalidCommand(Exception):
    """Raised by ``_step`` where Go's ``parseRuneForState`` returns ``errInvalidCommand``."""


def decode_modelfile(source: str | bytes) -> str:
    """The text Ollama's reader sees: BOM handling as ``unicode.BOMOverride``, one U+FFFD per bad byte."""
    if isinstance(source, str):
        text = source[1:] if source.startswith("\ufeff") else source
        return _replace_surrogates(text, "\ud800")
    data = bytes(source)
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", errors="replace")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", errors="replace")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape maps each undecodable byte to one lone surrogate; Go's decoder likewise
    # emits one U+FFFD per byte it cannot decode.
    return _replace_surrogates(data.decode("utf-8", errors="surrogateescape"), "\udc80")


def _replace_surrogates(text: str, low: str) -> str:
    """Replace every lone surrogate from ``low`` to U+DFFF with U+FFFD."""
    if not any(low <= ch <= "\udfff" for ch in text):
        return text
    return "".join("\ufffd" if low <= ch <= "\udfff" else ch for ch in text)


def _is_alpha(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _step(ch: str, state: _State) -> tuple[_State, str]:
    """Go's ``parseRuneForState``: the next state and the character to keep (``""`` for none)."""
    if state is _State.NIL:
        if ch == "#":
            return _State.COMMENT, ""
        if ch in _BLANK or ch in _NEWLINE:
            return _State.NIL, ""
        return _State.NAME, ch
    if state is _State.NAME:
        if _is_alpha(ch):
            return _State.NAME, ch
        if ch in _BLANK:
            return _State.VALUE, ""
        raise _InvalidCommand
    if state is _State.VALUE:
        if ch in _NEWLINE or ch in _BLANK:
            return _State.NIL, ch
        return _State.VALUE, ch
    if state is _State.PARAMETER:
        if _is_alpha(ch) or "0" <= ch <= "9" or ch == "_":
            return _State.PARAMETER, ch
        if ch in _BLANK:
            return _State.VALUE, ""
        raise _UnexpectedEOF
    if state is _State.MESSAGE:
        if _is_alpha(ch):
            return _State.MESSAGE, ch
        if ch in _BLANK:
            return _State.VALUE, ""
        raise _UnexpectedEOF
    # COMMENT
    if ch in _NEWLINE:
        return _State.NIL, ""
    return _State.COMMENT, ""


def _unquote(buf: list[str]) -> tuple[str, bool]:
    """Go's ``unquote(strings.TrimSpace(buffer))`` on the value buffer (one character per item).

    Strips one pair of ``\"\"\"`` or ``"``; ``complete`` is False while the quoted string is still
    open. Works on the list so that a long value is joined only once, not at every line break.
    """
    start, end = 0, len(buf)
    while start < end and buf[start] in _TRIM:
        start += 1
    while end > start and buf[end - 1] in _TRIM:
        end -= 1
    size = end - start
    if size >= 3 and buf[start] == buf[start + 1] == buf[start + 2] == '"':
        if size >= 6 and buf[end - 3] == buf[end - 2] == buf[end - 1] == '"':
            return "".join(buf[start + 3 : end - 3]), True
        return "", False
    if size >= 1 and buf[start] == '"':
        if size >= 2 and buf[end - 1] == '"':
            return "".join(buf[start + 1 : end - 1]), True
        return "", False
    return "".join(buf[start:end]), True


def parse_modelfile(source: str | bytes) -> list[Command]:
    """Parse a Modelfile exactly as Ollama's ``parser.ParseFile`` does.

    ``source`` is the file's raw bytes (preferred: BOMs and invalid UTF-8 are handled as Ollama
    does) or already-decoded text. Raises :class:`ModelfileError` with Ollama's message, e.g.
    ``(line 3): command must be one of ...``, ``unexpected EOF: num`` or ``no FROM line``.
    """
    commands: list[Command] = []
    state = _State.NIL
    line = 1
    buf: list[str] = []
    name = ""
    role = ""

    for ch in decode_modelfile(source):
        if ch in _NEWLINE:
            line += 1
        try:
            nxt, keep = _step(ch, state)
        except _UnexpectedEOF:
            raise ModelfileError(f"{UNEXPECTED_EOF}: {''.join(buf)}") from None
        except _InvalidCommand:
            raise ModelfileError(f"(line {line}): {INVALID_COMMAND}") from None

        if nxt is not state:
            if state is _State.NAME:
                keyword = "".join(buf).lower()
                if keyword not in COMMANDS:
                    raise ModelfileError(f"(line {line}): {INVALID_COMMAND}")
                if keyword == "from":
                    name = "model"
                elif keyword == "parameter":
                    nxt = _State.PARAMETER  # the parameter's own name comes next
                else:
                    if keyword == "message":
                        nxt = _State.MESSAGE  # the role comes next
                    name = keyword
            elif state is _State.PARAMETER:
                name = "".join(buf)
            elif state is _State.MESSAGE:
                role = "".join(buf)
                if role not in MESSAGE_ROLES:
                    raise ModelfileError(f"(line {line}): {INVALID_MESSAGE_ROLE}")
            elif state is _State.VALUE:
                if keep in (" ", "\t"):  # blanks inside a value are always kept
                    buf.append(keep)
                    continue
                value, complete = _unquote(buf)
                if not complete:  # an open quote: the line break belongs to the value
                    buf.append(keep)
                    continue
                if role:
                    value = f"{role}: {value}"
                    role = ""
                commands.append(Command(name, value))
            buf.clear()
            state = nxt

        if keep and keep.isprintable():  # str.isprintable() is Go's strconv.IsPrint
            buf.append(keep)

    if state is _State.VALUE:
        value, complete = _unquote(buf)
        if not complete:
            raise ModelfileError(UNEXPECTED_EOF)
        if role:
            value = f"{role}: {value}"
        commands.append(Command(name, value))
    elif state not in (_State.NIL, _State.COMMENT):
        raise ModelfileError(UNEXPECTED_EOF)

    if not any(command.name == "model" for command in commands):
        raise ModelfileError(MISSING_FROM)
    return commands
