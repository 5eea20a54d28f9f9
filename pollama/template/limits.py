"""Budgets that stop a runaway template render: steps, wall time and output size.

A template comes from a request or from a downloaded model, so its cost is chosen by whoever wrote
it: ``{{ range 300000000 }}{{ end }}`` loops for minutes without writing a byte, and
``{{ range 200 }}{{ printf "%1000000d" 0 }}{{ end }}`` writes 200 MB. Every Go template execution
(and every Jinja chat-template render) therefore runs against a :class:`Budget`, checked by the
executor itself as it walks: each walked node and each ``range`` iteration is a step, the clock is
read every few hundred steps, and output is counted as it is written (before it is kept), so a
render past any limit stops promptly with :class:`~pollama.errors.TemplateLimitExceeded` (an
``InvalidRequest``, so HTTP 400) whose message names the limit.

Rendering is CPU-bound and may take up to the time limit: callers must run it in a worker thread
(``anyio.to_thread.run_sync`` / ``run_in_threadpool``), never on an event loop. A thread cannot be
killed, which is why the budget is checked from inside the loop. The Go executor keeps its own
explicit stack, so template recursion down to Go's limit needs no large thread stack.

One ``Budget`` may span several executions (Ollama's legacy prompt path renders once per turn):
create it once per prompt and pass it to each ``execute``; its clock starts when it is created.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pollama.errors import TemplateLimitExceeded

#: Most steps (walked nodes and ``range`` iterations) one budget allows.
MAX_STEPS = 10_000_000
#: Wall-time limit of one budget, in seconds.
TIME_LIMIT = 2.0
#: Most bytes of output (UTF-8) one budget allows; also the largest string a template may compute.
MAX_OUTPUT = 16 * 1024 * 1024

#: Most blocks (lists being walked: template bodies, branches, range iterations) active at once.
#: Go stops ``{{template}}`` recursion at 100000 calls; this lets the common recursive shapes (a
#: body, or a body guarded by ``if``/``with``) reach Go's limit while bounding the memory a deeper
#: shape can take.
MAX_NESTING = 250_000

# How many steps pass between two looks at the clock.
_CLOCK_EVERY = 256


def describe_size(n: int) -> str:
    """``16 MiB``, ``512 KiB`` or ``1000 bytes``: a byte count as a limit message shows it."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (lone surrogates count as three, as Go's replacement does)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


class Budget:
    """What one render (or one prompt build made of several renders) may still spend.

    ``max_steps`` bounds walked nodes plus ``range`` iterations, ``time_limit`` the wall time in
    seconds from creation, ``max_output`` the bytes written. ``clock`` is injectable for tests.
    """

    __slots__ = ("_next_check", "clock", "deadline", "max_output", "max_steps", "steps", "time_limit", "written")

    def __init__(
        self,
        *,
        max_steps: int = MAX_STEPS,
        time_limit: float = TIME_LIMIT,
        max_output: int = MAX_OUTPUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_steps = max_steps
        self.time_limit = time_limit
        self.max_output = max_output
        self.clock = clock
        self.steps = 0
        self.written = 0
        self.deadline = clock() + time_limit
        self._next_check = min(_CLOCK_EVERY, max_steps)

    def step(self) -> None:
        """Count one step; every few hundred steps also look at the clock."""
        self.steps += 1
        if self.steps >= self._next_check:
            self._check()

    def _check(self) -> None:
        if self.steps > self.max_steps:
            raise TemplateLimitExceeded(f"template: execution exceeded the step limit of {self.max_steps} steps")
        self.check_time()
        self._next_check = min(self.steps + _CLOCK_EVERY, self.max_steps + 1)

    def check_time(self, activity: str = "execution") -> None:
        """Fail if the wall-time limit has passed (the message says ``activity`` exceeded it)."""
        if self.clock() > self.deadline:
            raise TemplateLimitExceeded(f"template: {activity} exceeded the time limit of {self.time_limit:g}s")

    def wrote(self, n: int) -> None:
        """Count ``n`` bytes of output, failing (before they are kept) if they pass the output limit."""
        self.written += n
        if self.written > self.max_output:
            raise TemplateLimitExceeded(f"template: output exceeds the limit of {describe_size(self.max_output)}")

    def check_value(self, n: int) -> None:
        """Fail if a computed value of ``n`` bytes or items is larger than the output limit allows."""
        if n > self.max_output:
            raise TemplateLimitExceeded(
                f"template: a computed value exceeds the output limit of {describe_size(self.max_output)}"
            )


def nesting_error(levels: int | None = None) -> TemplateLimitExceeded:
    """The error for a template nested deeper than ``levels`` blocks, or than Python's recursion allows."""
    if levels is None:
        return TemplateLimitExceeded("template: nesting exceeds the depth this template engine supports")
    return TemplateLimitExceeded(f"template: nesting exceeds the limit of {levels} levels")
