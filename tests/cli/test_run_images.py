"""Vision models through the real CLI against a real server: ``create`` from a Modelfile with two
``FROM`` lines, ``show``'s Projector section, and images named in ``run`` prompts and in the REPL.

The tiny model's answers mean nothing; what is checked is what the CLI controls: the requests it
sends (seen by a pass-through recorder in front of the server), the ``Added image`` lines and the
errors.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from tests.conftest import ServerProcess, VisionFiles

PLACEHOLDER = "Send a message (/? for help)"


class Recorder:
    """A pass-through HTTP proxy in front of a real server that keeps every request it forwards."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.requests: list[tuple[str, str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    decoded: Any = json.loads(body) if body else None
                except ValueError:
                    decoded = body
                recorder.requests.append((self.command, self.path, decoded))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                with (
                    httpx.Client(timeout=120) as client,
                    client.stream(self.command, recorder.target + self.path, content=body, headers=headers) as r,
                ):
                    self.send_response(r.status_code)
                    for key, value in r.headers.items():
                        if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(key, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        for chunk in r.iter_raw():
                            self.wfile.write(chunk)
                            self.wfile.flush()

            do_GET = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies of the requests sent to ``path``."""
        return [body for _, p, body in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory, vision_files: VisionFiles) -> Iterator[ServerProcess]:
    """A server with ``tinyvision`` created by ``pollama create`` from a Modelfile naming the
    projector first and the model second."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith("OLLAMA_")})
    os.environ.update({"HOME": str(home), "OLLAMA_MODELS": str(home / ".ollama" / "models")})
    try:
        proc = ServerProcess(home, {"OLLAMA_CONTEXT_LENGTH": "1024"}).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        folder = home / "build"
        folder.mkdir()
        (folder / "Modelfile").write_text(
            f"FROM {vision_files.projector}\nFROM {vision_files.model}\n"
            "PARAMETER num_predict 2\nPARAMETER temperature 0\n"
        )
        result = proc.cli("create", "tinyvision", "-f", str(folder / "Modelfile"))
        assert result.returncode == 0, result.stderr
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def recorder(vision_server: ServerProcess) -> Iterator[Recorder]:
    rec = Recorder(vision_server.url)
    yield rec
    rec.close()


def _run(
    server: ServerProcess, recorder: Recorder, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pollama", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**server.env, "OLLAMA_HOST": f"127.0.0.1:{recorder.port}"},
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_either_order_of_the_two_from_lines_gives_the_same_model(
    vision_server: ServerProcess, vision_files: VisionFiles, tmp_path: Path
) -> None:
    modelfile = tmp_path / "Modelfile"
    shutil.copy(vision_files.model, tmp_path / "model.gguf")
    shutil.copy(vision_files.projector, tmp_path / "mmproj.gguf")
    # the model first this time, by relative paths (the same bytes under other names)
    modelfile.write_text("FROM ./model.gguf\nFROM ./mmproj.gguf\nPARAMETER num_predict 2\nPARAMETER temperature 0\n")
    result = vision_server.cli("create", "reversed", "-f", str(modelfile))
    assert result.returncode == 0, result.stderr
    with vision_server.client() as c:
        shown = {name: c.post("/api/show", json={"model": name}).json() for name in ("tinyvision", "reversed")}
        manifests = {
            name: json.loads((vision_server.models / f"manifests/registry.ollama.ai/library/{name}/latest").read_text())
            for name in ("tinyvision", "reversed")
        }
    for name in ("tinyvision", "reversed"):
        assert shown[name]["capabilities"] == ["completion", "vision"]
        assert shown[name]["projector_info"]["general.architecture"] == "clip"
    media = [layer["mediaType"] for layer in manifests["reversed"]["layers"]]
    assert media == [
        "application/vnd.ollama.image.projector",  # Ollama's order, by file name: mmproj.gguf < model.gguf
        "application/vnd.ollama.image.model",
        "application/vnd.ollama.image.params",
    ]
    assert manifests["reversed"]["layers"] == manifests["tinyvision"]["layers"]


def test_show_prints_the_projector_section(vision_server: ServerProcess) -> None:
    result = vision_server.cli("show", "tinyvision")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "  Model\n"
        "    architecture        gemma3\n"
        "    parameters          256K\n"
        "    context length      4096\n"
        "    embedding length    64\n"
        "    quantization        F16\n"
        "\n"
        "  Capabilities\n"
        "    completion\n"
        "    vision\n"
        "\n"
        "  Projector\n"
        "    architecture        clip\n"
        "    parameters          46K\n"
        "    embedding length    32\n"
        "    dimensions          64\n"
        "\n"
        "  Parameters\n"
        "    num_predict    2\n"
        "    temperature    0\n"
        "\n"
    )


def test_run_sends_the_image_and_the_prompt_without_its_path(
    vision_server: ServerProcess, vision_files: VisionFiles, recorder: Recorder, tmp_path: Path
) -> None:
    shutil.copy(vision_files.shapes, tmp_path / "shapes.png")
    result = _run(vision_server, recorder, "run", "tinyvision", "what is in ./shapes.png ?", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Added image './shapes.png'\n"
    (request,) = recorder.bodies("/api/generate")
    assert request == {
        "model": "tinyvision",
        "prompt": "what is in  ?",
        "images": [_b64(vision_files.shapes)],
        "stream": True,
    }


def test_run_reads_quoted_paths_with_spaces_and_home_paths(
    vision_server: ServerProcess, vision_files: VisionFiles, recorder: Recorder, tmp_path: Path
) -> None:
    spaced = tmp_path / "my pictures" / "the shapes.png"
    spaced.parent.mkdir()
    shutil.copy(vision_files.shapes, spaced)
    shutil.copy(vision_files.stripes, vision_server.home / "stripes.png")
    prompt = f"compare '{spaced}' with ~/stripes.png please"
    result = _run(vision_server, recorder, "run", "tinyvision", prompt, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"Added image '{spaced}'\nAdded image '~/stripes.png'\n"
    (request,) = recorder.bodies("/api/generate")
    assert request["prompt"] == "compare  with  please"
    assert request["images"] == [_b64(vision_files.shapes), _b64(vision_files.stripes)]


def test_run_with_a_missing_image_is_one_error_line(
    vision_server: ServerProcess, recorder: Recorder, tmp_path: Path
) -> None:
    result = _run(vision_server, recorder, "run", "tinyvision", "what is in ./photo.png", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        'Error: couldn\'t process file "./photo.png": open ./photo.png: no such file or directory\n'
    )
    assert recorder.bodies("/api/generate") == []  # nothing was sent


def test_run_with_a_file_that_is_not_an_image(vision_server: ServerProcess, recorder: Recorder, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    result = _run(vision_server, recorder, "run", "tinyvision", "read ./notes.png", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        'Error: couldn\'t process file "./notes.png": invalid file type: text/plain; charset=utf-8\n'
    )
    assert recorder.bodies("/api/generate") == []


def test_repl_attaches_images_and_survives_a_missing_one(
    vision_server: ServerProcess, vision_files: VisionFiles, recorder: Recorder, tmp_path: Path
) -> None:
    spaced = tmp_path / "a b" / "shapes.png"
    spaced.parent.mkdir()
    shutil.copy(vision_files.shapes, spaced)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pollama", "run", "tinyvision"],
        env={
            **vision_server.env,
            "OLLAMA_HOST": f"127.0.0.1:{recorder.port}",
            "TERM": "xterm-256color",
            "PROMPT_TOOLKIT_NO_CPR": "1",
        },
        cwd=str(tmp_path),
        dimensions=(24, 200),
        encoding="utf-8",
        codec_errors="replace",
        timeout=90,
    )
    try:
        child.expect_exact(PLACEHOLDER)
        child.sendline(f'"{spaced}" what is this?')
        child.expect_exact(f"Added image '{spaced}'")
        child.expect_exact(PLACEHOLDER)
        child.sendline("and ./missing.png?")
        child.expect_exact(
            'error: couldn\'t process file "./missing.png": open ./missing.png: no such file or directory'
        )
        child.expect_exact(PLACEHOLDER)
        # a line that starts with an absolute path is a message, not an unknown /command
        child.sendline(f"{vision_files.stripes} now this one")
        child.expect_exact(f"Added image '{vision_files.stripes}'")
        child.expect_exact(PLACEHOLDER)
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    chats = recorder.bodies("/api/chat")
    assert len(chats) == 2  # the turn with the missing file was never sent
    first, second = chats
    assert first["messages"] == [{"role": "user", "content": "what is this?", "images": [_b64(vision_files.shapes)]}]
    user_turns = [m for m in second["messages"] if m["role"] == "user"]
    assert user_turns == [
        {"role": "user", "content": "what is this?", "images": [_b64(vision_files.shapes)]},
        {"role": "user", "content": "now this one", "images": [_b64(vision_files.stripes)]},
    ]
