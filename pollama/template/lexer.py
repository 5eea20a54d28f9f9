"""The tokenizer of Go's ``text/template`` (``text/template/parse/lex.go``), rule for rule.

It owns turning template text into items: text runs, delimiters (with ``{{-``/``-}}`` trimming
applied to the neighbouring text, as Go does in the lexer), and the tokens inside actions. Errors
are produced as an ``ERROR`` item carrying Go's exact message, and scanning stops there, so the
parser reports them at the same point Go does.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from pollama.template.gostrconv import is_print, quote
from pollama.template.limits import Budget

# Item types. Keywords sort after KEYWORD so ``typ > KEYWORD`` tells them apart, as in Go.
ERROR = 0
BOOL = 1
CHAR = 2
CHAR_CONSTANT = 3
COMMENT = 4
COMPLEX = 5
ASSIGN = 6
DECLARE = 7
EOF = 8
FIELD = 9
IDENTIFIER = 10
LEFT_DELIM = 11
LEFT_PAREN = 12
NUMBER = 13
PIPE = 14
RAW_STRING = 15
RIGHT_DELIM = 16
RIGHT_PAREN = 17
SPACE = 18
STRING = 19
TEXT = 20
VARIABLE = 21
KEYWORD = 22
BLOCK = 23
BREAK = 24
CONTINUE = 25
DOT = 26
DEFINE = 27
ELSE = 28
END = 29
IF = 30
NIL = 31
RANGE = 32
TEMPLATE = 33
WITH = 34

KEYWORDS: dict[str, int] = {
    ".": DOT,
    "block": BLOCK,
    "break": BREAK,
    "continue": CONTINUE,
    "define": DEFINE,
    "else": ELSE,
    "end": END,
    "if": IF,
    "range": RANGE,
    "nil": NIL,
    "template": TEMPLATE,
    "with": WITH,
}

LEFT_DELIM_TEXT = "{{"
RIGHT_DELIM_TEXT = "}}"
_SPACE_CHARS = " \t\r\n"


@dataclass(slots=True)
class Item:
    """One lexical item: its type, character offset in the source, text and starting line."""

    typ: int
    pos: int
    val: str
    line: int

    def __str__(self) -> str:
        """Go's ``item.String()``, used in "unexpected X in Y" messages."""
        if self.typ == EOF:
            return "EOF"
        if self.typ == ERROR:
            return self.val
        if self.typ > KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return quote(self.val[:10]) + "..."
        return quote(self.val)


def _is_space(c: str) -> bool:
    return c in _SPACE_CHARS and c != ""


def is_alphanumeric(c: str) -> bool:
    """Go's ``isAlphaNumeric``: underscore, Unicode letter or Unicode decimal digit."""
    if c == "_":
        return True
    if c == "":
        return False
    if c.isascii():
        return c.isalnum()
    cat = unicodedata.category(c)
    return cat[0] == "L" or cat == "Nd"


def _is_print_ascii(c: str) -> bool:
    return " " <= c <= "~"


def _has_left_trim_marker(text: str, i: int) -> bool:
    return i + 1 < len(text) and text[i] == "-" and text[i + 1] in _SPACE_CHARS


def _has_right_trim_marker(text: str, i: int) -> bool:
    return i + 1 < len(text) and text[i] in _SPACE_CHARS and text[i + 1] == "-"


def format_rune_U(c: str) -> str:
    """Go's ``%#U`` of a rune: ``U+002D '-'``."""
    cp = ord(c)
    if is_print(c):
        return f"U+{cp:04X} '{c}'"
    return f"U+{cp:04X}"


class _Lexer:
    """State machine over the template text; ``run`` returns the complete item list."""

    def __init__(self, text: str, break_ok: bool = True, continue_ok: bool = True) -> None:
        self.input = text
        self.pos = 0
        self.start = 0
        self.line = 1
        self.start_line = 1
        self.paren_depth = 0
        self.budget: Budget | None = None
        self.items: list[Item] = []
        self.break_ok = break_ok
        self.continue_ok = continue_ok

    # -- helpers ------------------------------------------------------------------------------

    def next(self) -> str:
        if self.pos >= len(self.input):
            self.pos = len(self.input) + 1  # remember we hit EOF so backup is a no-op
            return ""
        c = self.input[self.pos]
        self.pos += 1
        if c == "\n":
            self.line += 1
        return c

    def backup(self) -> None:
        if self.pos > len(self.input):
            self.pos = len(self.input)
            return
        if self.pos > 0:
            self.pos -= 1
            if self.input[self.pos] == "\n":
                self.line -= 1

    def peek(self) -> str:
        if self.pos >= len(self.input):
            return ""
        return self.input[self.pos]

    def emit(self, typ: int) -> None:
        self.items.append(Item(typ, self.start, self.input[self.start : self.pos], self.start_line))
        self.start = self.pos
        self.start_line = self.line
        if self.budget is not None and len(self.items) % 256 == 0:
            self.budget.check_time("parsing")

    def ignore(self) -> None:
        self.line += self.input.count("\n", self.start, self.pos)
        self.start = self.pos
        self.start_line = self.line

    def accept(self, valid: str) -> bool:
        c = self.next()
        if c != "" and c in valid:
            return True
        self.backup()
        return False

    def accept_run(self, valid: str) -> None:
        while True:
            c = self.next()
            if c == "" or c not in valid:
                break
        self.backup()

    def error(self, message: str) -> bool:
        self.items.append(Item(ERROR, self.start, message, self.start_line))
        return False

    def at_right_delim(self) -> tuple[bool, bool]:
        text, pos = self.input, self.pos
        if _has_right_trim_marker(text, pos) and text.startswith(RIGHT_DELIM_TEXT, pos + 2):
            return True, True
        if text.startswith(RIGHT_DELIM_TEXT, pos):
            return True, False
        return False, False

    def at_terminator(self) -> bool:
        c = self.peek()
        if c == "" or _is_space(c):
            return True
        if c in ".,|:()":
            return True
        return self.input.startswith(RIGHT_DELIM_TEXT, self.pos)

    # -- states -------------------------------------------------------------------------------

    def run(self) -> list[Item]:
        inside = False
        while True:
            ok = self.lex_inside_action() if inside else self.lex_text()
            if not ok:
                return self.items
            if self.items[-1].typ == EOF:
                return self.items
            last = self.items[-1].typ
            if last == LEFT_DELIM:
                inside = True
            elif last == RIGHT_DELIM:
                inside = False

    def lex_text(self) -> bool:
        """Scan text up to the next ``{{`` (applying a left trim marker), then the delimiter."""
        text = self.input
        while True:
            x = text.find(LEFT_DELIM_TEXT, self.pos)
            if x < 0:
                self.pos = len(text)
                if self.pos > self.start:
                    self.line += text.count("\n", self.start, self.pos)
                    self.emit(TEXT)
                self.emit(EOF)
                return True
            if x > self.pos:
                self.pos = x
                trim = 0
                if _has_left_trim_marker(text, x + 2):
                    chunk = text[self.start : x]
                    trim = len(chunk) - len(chunk.rstrip(_SPACE_CHARS))
                self.pos -= trim
                self.line += text.count("\n", self.start, self.pos)
                item = Item(TEXT, self.start, text[self.start : self.pos], self.start_line)
                self.start = self.pos
                self.start_line = self.line
                self.pos += trim
                self.ignore()
                if item.val:
                    self.items.append(item)
            result = self.lex_left_delim()
            if result != "comment":
                return result == "delim"

    def lex_left_delim(self) -> str:
        """Scan ``{{`` (and a trim marker); returns "delim", "comment" (skipped) or "error"."""
        text = self.input
        self.pos += len(LEFT_DELIM_TEXT)
        trim_space = _has_left_trim_marker(text, self.pos)
        after = 2 if trim_space else 0
        if text.startswith("/*", self.pos + after):
            self.pos += after
            self.ignore()
            return "comment" if self.lex_comment() else "error"
        self.items.append(Item(LEFT_DELIM, self.start, text[self.start : self.pos], self.start_line))
        self.start = self.pos
        self.start_line = self.line
        self.pos += after
        self.ignore()
        self.paren_depth = 0
        return "delim"

    def lex_comment(self) -> bool:
        text = self.input
        self.pos += 2
        x = text.find("*/", self.pos)
        if x < 0:
            return self.error("unclosed comment")
        self.pos = x + 2
        delim, trim_space = self.at_right_delim()
        if not delim:
            return self.error("comment ends before closing delimiter")
        self.line += text.count("\n", self.start, self.pos)
        self.start = self.pos
        self.start_line = self.line
        if trim_space:
            self.pos += 2
        self.pos += len(RIGHT_DELIM_TEXT)
        if trim_space:
            rest = text[self.pos :]
            self.pos += len(rest) - len(rest.lstrip(_SPACE_CHARS))
        self.ignore()
        return True

    def lex_right_delim(self) -> bool:
        text = self.input
        _, trim_space = self.at_right_delim()
        if trim_space:
            self.pos += 2
            self.ignore()
        self.pos += len(RIGHT_DELIM_TEXT)
        self.emit(RIGHT_DELIM)
        if trim_space:
            rest = text[self.pos :]
            self.pos += len(rest) - len(rest.lstrip(_SPACE_CHARS))
            self.ignore()
        return True

    def lex_inside_action(self) -> bool:
        """Scan one item inside an action."""
        delim, _ = self.at_right_delim()
        if delim:
            if self.paren_depth == 0:
                return self.lex_right_delim()
            return self.error("unclosed left paren")
        c = self.next()
        if c == "":
            return self.error("unclosed action")
        if _is_space(c):
            self.backup()
            return self.lex_space()
        if c == "=":
            self.emit(ASSIGN)
            return True
        if c == ":":
            if self.next() != "=":
                return self.error("expected :=")
            self.emit(DECLARE)
            return True
        if c == "|":
            self.emit(PIPE)
            return True
        if c == '"':
            return self.lex_quote()
        if c == "`":
            return self.lex_raw_quote()
        if c == "$":
            return self.lex_variable()
        if c == "'":
            return self.lex_char()
        if c == ".":
            if self.pos < len(self.input):
                n = self.input[self.pos]
                if n < "0" or n > "9":
                    return self.lex_field_or_variable(FIELD)
            self.backup()
            return self.lex_number()
        if c in "+-" or "0" <= c <= "9":
            self.backup()
            return self.lex_number()
        if is_alphanumeric(c):
            self.backup()
            return self.lex_identifier()
        if c == "(":
            self.paren_depth += 1
            self.emit(LEFT_PAREN)
            return True
        if c == ")":
            self.paren_depth -= 1
            if self.paren_depth < 0:
                return self.error("unexpected right paren")
            self.emit(RIGHT_PAREN)
            return True
        if _is_print_ascii(c):
            self.emit(CHAR)
            return True
        return self.error(f"unrecognized character in action: {format_rune_U(c)}")

    def lex_space(self) -> bool:
        num_spaces = 0
        while _is_space(self.peek()):
            self.next()
            num_spaces += 1
        text = self.input
        if _has_right_trim_marker(text, self.pos - 1) and text.startswith(RIGHT_DELIM_TEXT, self.pos + 1):
            self.backup()
            if num_spaces == 1:
                return self.lex_right_delim()
        self.emit(SPACE)
        return True

    def lex_identifier(self) -> bool:
        while True:
            c = self.next()
            if is_alphanumeric(c):
                continue
            self.backup()
            word = self.input[self.start : self.pos]
            if not self.at_terminator():
                return self.error(f"bad character {format_rune_U(c)}")
            kw = KEYWORDS.get(word, 0)
            if kw > KEYWORD:
                if (kw == BREAK and not self.break_ok) or (kw == CONTINUE and not self.continue_ok):
                    self.emit(IDENTIFIER)
                else:
                    self.emit(kw)
            elif word[0] == ".":
                self.emit(FIELD)
            elif word in ("true", "false"):
                self.emit(BOOL)
            else:
                self.emit(IDENTIFIER)
            return True

    def lex_variable(self) -> bool:
        if self.at_terminator():
            self.emit(VARIABLE)
            return True
        return self.lex_field_or_variable(VARIABLE)

    def lex_field_or_variable(self, typ: int) -> bool:
        if self.at_terminator():
            self.emit(VARIABLE if typ == VARIABLE else DOT)
            return True
        while True:
            c = self.next()
            if not is_alphanumeric(c):
                self.backup()
                break
        if not self.at_terminator():
            return self.error(f"bad character {format_rune_U(c)}")
        self.emit(typ)
        return True

    def lex_char(self) -> bool:
        while True:
            c = self.next()
            if c == "\\":
                c2 = self.next()
                if c2 != "" and c2 != "\n":
                    continue
                return self.error("unterminated character constant")
            if c == "" or c == "\n":
                return self.error("unterminated character constant")
            if c == "'":
                break
        self.emit(CHAR_CONSTANT)
        return True

    def lex_number(self) -> bool:
        if not self.scan_number():
            return self.error(f"bad number syntax: {quote(self.input[self.start : self.pos])}")
        sign = self.peek()
        if sign in ("+", "-") and sign != "":
            if not self.scan_number() or self.input[self.pos - 1] != "i":
                return self.error(f"bad number syntax: {quote(self.input[self.start : self.pos])}")
            self.emit(COMPLEX)
            return True
        self.emit(NUMBER)
        return True

    def scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 10 + 1 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 16 + 6 + 1 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if is_alphanumeric(self.peek()):
            self.next()
            return False
        return True

    def lex_quote(self) -> bool:
        while True:
            c = self.next()
            if c == "\\":
                c2 = self.next()
                if c2 != "" and c2 != "\n":
                    continue
                return self.error("unterminated quoted string")
            if c == "" or c == "\n":
                return self.error("unterminated quoted string")
            if c == '"':
                break
        self.emit(STRING)
        return True

    def lex_raw_quote(self) -> bool:
        while True:
            c = self.next()
            if c == "":
                return self.error("unterminated raw quoted string")
            if c == "`":
                break
        self.emit(RAW_STRING)
        return True


def lex(text: str, budget: Budget | None = None) -> list[Item]:
    """All items of ``text``, ending with an ``EOF`` or an ``ERROR`` item.

    With a ``budget``, its clock is read every few hundred items, so a huge template fails with
    ``TemplateLimitExceeded`` instead of tying up its thread (and memory) for minutes.
    """
    lexer = _Lexer(text)
    lexer.budget = budget
    return lexer.run()
