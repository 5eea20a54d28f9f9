"""``pollama run`` without the REPL: one-shot prompts, piped stdin, ``--verbose`` stats, ``--format json``,
``--keepalive``, ``--think`` and attachments, driven through the real CLI against a real server."""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import ServerProcess


def _cli(
    server: ServerProcess, *args: str, input: str = "", timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``pollama ARGS``, with stdin given explicitly (an inherited stdin might never reach EOF)."""
    return server.cli(*args, input=input, timeout=timeout)


# Go's time.Duration.String(): 1.5s, 52.3ms, 1m2.5s, 800µs, 120ns
GO_DURATION = r"(?:\d+h)?(?:\d+m)?\d+(?:\.\d+)?(?:ns|µs|ms|s)"


@pytest.fixture(scope="module")
def short(smollm2_server: ServerProcess) -> Iterator[str]:
    """``short``: smollm2 answering with at most 32 tokens, greedily."""
    with smollm2_server.client() as c:
        r = c.post(
            "/api/create",
            json={
                "model": "short",
                "from": "smollm2",
                "stream": False,
                "parameters": {"num_predict": 32, "temperature": 0},
            },
        )
        assert r.status_code == 200, r.text
    yield "short"


def test_one_shot_prints_the_answer_and_a_blank_line(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "What", "is", "the", "capital", "of", "France?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stdout.endswith("\n\n")
    assert "\x1b[" not in result.stdout  # no wrapping or colours when stdout is not a terminal
    assert result.stderr == ""


def test_prompt_words_after_flags_are_part_of_the_prompt(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "--nowordwrap", "Say", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def _prompt_tokens(stderr: str) -> int:
    match = re.search(r"^prompt eval count:\s+(\d+) token\(s\)$", stderr, re.MULTILINE)
    assert match, stderr
    return int(match.group(1))


def test_piped_stdin_is_prepended_to_the_prompt(smollm2_server: ServerProcess, short: str) -> None:
    text = "Paris is the capital and most populous city of France, on the river Seine. " * 4
    with_stdin = _cli(smollm2_server, "run", short, "--verbose", "Summarize", "this.", input=text)
    assert with_stdin.returncode == 0, with_stdin.stderr
    assert with_stdin.stdout.strip()
    alone = _cli(smollm2_server, "run", short, "--verbose", "Summarize", "this.", input="")
    assert alone.returncode == 0, alone.stderr
    # stdin adds ~70 tokens in front of the arguments (empty stdin adds nothing)
    assert _prompt_tokens(with_stdin.stderr) >= _prompt_tokens(alone.stderr) + 40


def test_stdin_alone_is_the_prompt(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, input="What is 2 + 2?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stdout.endswith("\n\n")


def test_verbose_prints_ollama_stats_on_stderr(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "--verbose", "Name a color.")
    assert result.returncode == 0, result.stderr
    assert "duration" not in result.stdout
    lines = result.stderr.splitlines()
    patterns = {
        "total duration:": rf"^total duration:\s+{GO_DURATION}$",
        "load duration:": rf"^load duration:\s+{GO_DURATION}$",
        "prompt eval count:": r"^prompt eval count:\s+\d+ token\(s\)$",
        "prompt eval duration:": rf"^prompt eval duration:\s+{GO_DURATION}$",
        "prompt eval rate:": r"^prompt eval rate:\s+\d+\.\d\d tokens/s$",
        "eval count:": r"^eval count:\s+\d+ token\(s\)$",
        "eval duration:": rf"^eval duration:\s+{GO_DURATION}$",
        "eval rate:": r"^eval rate:\s+\d+\.\d\d tokens/s$",
    }
    labels = [line[:22].rstrip() for line in lines]
    for label, pattern in patterns.items():  # load duration too: the model is loaded, but it is never 0
        matching = [line for line in lines if line.startswith(label)]
        assert len(matching) == 1, (label, result.stderr)
        assert re.match(pattern, matching[0]), matching[0]
        assert matching[0][:22] == label.ljust(22), matching[0]  # value starts in column 23
    order = [label for label in patterns if label in labels]
    assert order == [label for label in labels if label in patterns]
    counted = int(re.search(r"^eval count:\s+(\d+)", result.stderr, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert 0 < counted <= 32


def test_format_json_output_parses(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "--format", "json", "Give your name as JSON.")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), dict)


def test_keepalive_is_sent_as_a_go_duration(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "--keepalive", "10m", "Hi")
    assert result.returncode == 0, result.stderr
    ps = _cli(smollm2_server, "ps")
    row = next(line for line in ps.stdout.splitlines() if line.startswith("short:latest"))
    assert re.search(r"(9|10) minutes from now$", row), ps.stdout


def test_bad_keepalive_is_go_s_error(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "--keepalive", "soon", "Hi")
    assert result.returncode == 1
    assert result.stderr == 'Error: time: invalid duration "soon"\n'


def test_invalid_think_value(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "--think=loud", "Hi")
    assert result.returncode == 1
    assert result.stderr == (
        'Error: invalid value for --think: "loud" (must be true, false, high, medium, low, or max)\n'
    )


def test_think_on_a_model_without_thinking_is_the_server_s_error(smollm2_server: ServerProcess, short: str) -> None:
    # a bare --think must not swallow the model name that follows it
    result = _cli(smollm2_server, "run", "--think", short, "Hi")
    assert result.returncode == 1
    assert "does not support thinking" in result.stderr


def test_nothink_is_sent_and_accepted(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", "--think=false", "--hidethinking", short, "Hi")
    assert result.returncode == 0, result.stderr
    assert "Thinking..." not in result.stdout


def _png(path: Path) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00\xff\x00\x00"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def test_image_for_a_model_without_vision_is_a_clear_error(
    smollm2_server: ServerProcess, short: str, tmp_path: Path
) -> None:
    image = _png(tmp_path / "dot.png")
    result = _cli(smollm2_server, "run", short, f"What is in {image}?")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: model 'short' does not support image or audio input")
    assert str(image) in result.stderr


def test_a_path_that_does_not_exist_stays_text(smollm2_server: ServerProcess, short: str) -> None:
    result = _cli(smollm2_server, "run", short, "Is /no/such/picture.png a file name?")
    assert result.returncode == 0, result.stderr


def test_missing_model_is_pulled_first(smollm2_server: ServerProcess) -> None:
    # nothing listens on port 9: the pull fails fast and its error is what the user sees
    result = _cli(smollm2_server, "run", "--insecure", "127.0.0.1:9/library/nosuch", "Hi", timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    with smollm2_server.client() as c:
        names = [m["name"] for m in c.get("/api/tags").json()["models"]]
    assert not any("nosuch" in name for name in names)


def _screen(output: str) -> list[str]:
    """The lines a terminal shows for ``output`` (handles CR, LF, ESC[nD and ESC[K)."""
    lines: list[list[str]] = [[]]
    col = 0
    for token in re.findall(r"\x1b\[(\d*)([A-Za-z])|(.)", output, re.DOTALL):
        number, command, ch = token
        line = lines[-1]
        if command == "D":
            col = max(col - int(number or 1), 0)
        elif command == "K":
            del line[col:]
        elif command:
            continue
        elif ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.extend(" " * (col - len(line)))
                line.append(ch)
            col += 1
    return ["".join(line) for line in lines]


def test_word_wrap_on_a_terminal(smollm2_server: ServerProcess, short: str) -> None:
    """On a 40-column terminal the answer is wrapped before column 35, words kept whole."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pollama", "run", short, "Write one long sentence about the history of bread."],
        env=smollm2_server.env,
        dimensions=(24, 40),
        encoding="utf-8",
        timeout=60,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    lines = _screen(child.before or "")
    assert sum(1 for line in lines if line.strip()) >= 2, lines  # 32 tokens do not fit on one line
    assert all(len(line.rstrip()) <= 35 for line in lines), lines


def test_nowordwrap_on_a_terminal_prints_plain_text(smollm2_server: ServerProcess, short: str) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pollama", "run", "--nowordwrap", short, "Write one long sentence about the history of bread."],
        env=smollm2_server.env,
        dimensions=(24, 40),
        encoding="utf-8",
        timeout=60,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "\x1b[K\r\n" not in (child.before or "")


# --- pure pieces --------------------------------------------------------------------------------------


def test_word_wrapper_backtracks_the_current_word() -> None:
    from pollama.cli._output import WordWrapper

    out = io.StringIO()
    wrapper = WordWrapper(out, width=20)
    for piece in ("The quick brown", " fox jumps over", " the lazy dog"):
        wrapper.write(piece)
    text = out.getvalue()
    assert "\x1b[5D\x1b[K\nbrown" in text
    visible = re.sub(r".*\x1b\[\d+D\x1b\[K\n|\x1b\[K\n", "\n", text)
    assert all(len(line) <= 16 for line in visible.split("\n"))

    plain = io.StringIO()
    WordWrapper(plain, width=20).write("The quick brown fox jumps", wrap=False)
    assert plain.getvalue() == "The quick brown fox jumps"
    narrow = io.StringIO()
    WordWrapper(narrow, width=0).write("The quick brown fox jumps")
    assert narrow.getvalue() == "The quick brown fox jumps"


def test_stats_block_format() -> None:
    from pollama.cli._output import format_stats

    text = format_stats(
        {
            "total_duration": 1_234_567_891,
            "load_duration": 52_300_000,
            "prompt_eval_count": 12,
            "prompt_eval_duration": 45_600_000,
            "eval_count": 24,
            "eval_duration": 987_654_321,
        }
    )
    assert text == (
        "total duration:       1.234567891s\n"
        "load duration:        52.3ms\n"
        "prompt eval count:    12 token(s)\n"
        "prompt eval duration: 45.6ms\n"
        "prompt eval rate:     263.16 tokens/s\n"
        "eval count:           24 token(s)\n"
        "eval duration:        987.654321ms\n"
        "eval rate:            24.30 tokens/s\n"
    )
    assert format_stats({"total_duration": 61_500_000_000, "eval_count": 1}) == (
        "total duration:       1m1.5s\neval count:           1 token(s)\n"
    )


def test_thinking_is_shown_like_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    from pollama.cli import _run

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    printer = _run._AnswerPrinter(_run.RunOptions(model="m"), plain=True)
    printer.feed("Let me", "", [])
    printer.feed(" think.", "", [])
    printer.feed("", "Hello", [])
    printer.feed("", " there", [])
    assert out.getvalue() == "Thinking...\nLet me think.\n...done thinking.\n\nHello there"

    hidden = io.StringIO()
    monkeypatch.setattr(sys, "stdout", hidden)
    printer = _run._AnswerPrinter(_run.RunOptions(model="m", hide_thinking=True), plain=True)
    printer.feed("secret", "", [])
    printer.feed("", "Hello", [])
    assert hidden.getvalue() == "Hello"
    assert "".join(printer.thinking) == "secret"


def test_embedding_vector_json_matches_go() -> None:
    from pollama.cli._run import _json_float

    assert [_json_float(x) for x in (0.1, 1.0, 0.0, -0.00001234, 1e-7, -2.5e-8, 123456.5)] == [
        "0.1",
        "1",
        "0",
        "-0.00001234",
        "1e-7",
        "-2.5e-8",
        "123456.5",
    ]


def test_run_against_a_missing_pull_endpoint_is_ollama_s_not_found() -> None:
    """A server without ``/api/pull`` (404/405 from the router) gives Ollama's manifest error."""
    from pollama.cli import _run

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/show":
            return httpx.Response(404, json={"error": "model 'x' not found"})
        return httpx.Response(404, text="404 page not found")

    with pytest.raises(_run.RunError, match="^pull model manifest: file does not exist$"):
        _run.show_or_pull(_fake_client(handler), "x")  # type: ignore[arg-type]


def _fake_client(handler: object) -> object:
    """A real ``Client`` whose HTTP transport is ``handler`` (the seam where a fake is allowed)."""
    from pollama.client import Client

    client = Client("http://pollama.test")
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    client._http = httpx.Client(base_url="http://pollama.test", transport=transport)
    return client


def _run_args(*argv: str) -> object:
    from pollama.cli.main import _normalize_argv, build_parser

    return build_parser().parse_args(_normalize_argv(["run", *argv]))


def test_embedding_model_prints_the_first_vector(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No embedding GGUF ships with the test packages, so the server side is faked at the HTTP seam."""
    from pollama.cli._run import RunError, run_command

    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/show":
            return httpx.Response(200, json={"capabilities": ["embedding"], "details": {}})
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"model": "e", "embeddings": [[0.5, -1.0, 1e-7, 0.0], [9.0]]})

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    client = _fake_client(handler)
    with pytest.raises(RunError, match='^embedding models require input text. Usage: ollama run e "your text here"$'):
        run_command(client, _run_args("e"))  # type: ignore[arg-type]
    args = _run_args("e", "hello", "world", "--dimensions", "4", "--truncate=false", "--keepalive", "1m")
    assert run_command(client, args) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == "[0.5,-1,1e-7,0]\n"
    assert seen == [{"model": "e", "input": "hello world", "keep_alive": "1m0s", "truncate": False, "dimensions": 4}]


THINKING_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{- if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n{{ if .IsThinkSet }}<think>{{ end }}"
)


def test_thinking_model_gets_think_by_default_and_shows_thinking(smollm2_server: ServerProcess) -> None:
    """A thinking-capable model (its template wraps ``.Thinking`` in ``<think>`` tags) is sent ``think``
    without ``--think``; whatever the server parses as thinking is framed as Ollama frames it."""
    with smollm2_server.client() as c:
        r = c.post(
            "/api/create",
            json={
                "model": "thinker",
                "from": "smollm2",
                "template": THINKING_TEMPLATE,
                "stream": False,
                "parameters": {"num_predict": 16, "temperature": 0},
            },
        )
        assert r.status_code == 200, r.text
        assert "thinking" in c.post("/api/show", json={"model": "thinker"}).json()["capabilities"]
    result = _cli(smollm2_server, "run", "thinker", "Hi")
    assert result.returncode == 0, result.stderr
    # the template opens <think> for the model, so its answer (16 tokens, never closing it) is thinking
    assert result.stdout.startswith("Thinking...\n"), result.stdout
    thought = result.stdout.removeprefix("Thinking...\n").split("\n...done thinking.\n\n")[0].strip()
    assert thought
    hidden = _cli(smollm2_server, "run", "--hidethinking", "thinker", "Hi")
    assert hidden.returncode == 0, hidden.stderr
    assert "Thinking..." not in hidden.stdout
    assert thought not in hidden.stdout
    off = _cli(smollm2_server, "run", "--think=false", "thinker", "Hi")
    assert off.returncode == 0, off.stderr
    assert "Thinking..." not in off.stdout
    assert off.stdout.strip()


def test_ctrl_c_stops_a_one_shot_answer(smollm2_server: ServerProcess) -> None:
    with smollm2_server.client() as c:
        r = c.post(
            "/api/create",
            json={
                "model": "storyteller",
                "from": "smollm2",
                "stream": False,
                "parameters": {"num_predict": 400, "temperature": 0},
            },
        )
        assert r.status_code == 200, r.text
    # 400 tokens are allowed only so there is something to interrupt; Ctrl+C ends it at once
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pollama", "run", "storyteller", "Write a long story about a dragon."],
        env=smollm2_server.env,
        dimensions=(24, 200),
        encoding="utf-8",
        timeout=60,
    )
    child.expect(r"\w+ \w+ \w+")
    started = time.monotonic()
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert time.monotonic() - started < 10
    assert child.exitstatus == 0
    assert not (child.before or "").endswith("\r\n\r\n")  # cut short: no closing blank line


def test_attachments_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unit rules of the extraction (the real CLI path is in ``test_vision.py``)."""
    from pollama.cli._run import RunError, extract_attachments

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(
        RunError, match=r'^couldn\'t process file ".*notes.png": invalid file type: text/plain; charset=utf-8$'
    ):
        extract_attachments(f"look at {text}")
    image = _png(tmp_path / "x.png")
    with pytest.raises(
        RunError,
        match=r'^couldn\'t process file "/no/such/file.png": open /no/such/file.png: no such file or directory$',
    ):
        extract_attachments(f"'{image}' and /no/such/file.png please")
    assert capsys.readouterr().err == ""  # nothing is added when one of the files fails
    # part of a URL is not a path: left as text
    prompt, images = extract_attachments(f"'{image}' like https://example.com/logo.png please")
    assert prompt == "like https://example.com/logo.png please"
    assert len(images) == 1
    assert capsys.readouterr().err == f"Added image '{image}'\n"
    # words swallowed before the real path (the pattern allows spaces) do not hide it
    prompt, images = extract_attachments(f"the file /etc/nothing and {image} now")
    assert prompt == "the file /etc/nothing and  now"
    assert len(images) == 1
    # ../ and shell escapes
    (tmp_path / "sub").mkdir()
    spaced = _png(tmp_path / "a b(1).png")
    prompt, images = extract_attachments(f"{tmp_path}/sub/../a\\ b\\(1\\).png ok")
    assert (prompt, len(images)) == ("ok", 1)
    assert capsys.readouterr().err.endswith(f"Added image '{tmp_path}/sub/../{spaced.name}'\n")
