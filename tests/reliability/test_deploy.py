"""The systemd unit and the container recipe in ``deploy/`` (shown in the README) say what pollama needs:
the unit starts ``pollama serve`` as its own user, can write the models folder under its hardening,
and gives a stop more time than the shutdown grace; the recipe runs as non-root with a health check
on ``/health`` and a volume for the models. ``systemd-analyze verify`` checks the unit when present.
"""

from __future__ import annotations

import importlib.metadata
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pollama.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
README = Path(__file__).resolve().parents[2] / "README.md"


def _unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as systemd reads it: sections of (key, value) in order, keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for k, value in section if k == key]


def _one(section: list[tuple[str, str]], key: str) -> str:
    (value,) = _values(section, key)
    return value


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.fixture(scope="module")
def service() -> dict[str, list[tuple[str, str]]]:
    return _unit((DEPLOY / "pollama.service").read_text())


def test_unit_starts_pollama_serve_as_its_own_user(service: dict[str, list[tuple[str, str]]]) -> None:
    main = service["Service"]
    argv = shlex.split(_one(main, "ExecStart"))
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "pollama"
    assert argv[1:] == ["serve"]
    # The ``pollama`` command is this package's console script, and ``serve`` is one of its verbs.
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "pollama"]
    assert script.value == "pollama.cli.main:main"
    run = subprocess.run([sys.executable, "-m", "pollama", *argv[1:], "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "OLLAMA_HOST" in run.stdout, run.stderr
    assert _one(main, "User") == "pollama" and _one(main, "Group") == "pollama"
    assert _one(main, "Restart") == "on-failure"
    assert service["Install"] == [("WantedBy", "multi-user.target")]


def test_unit_settings_are_ones_pollama_reads(service: dict[str, list[tuple[str, str]]]) -> None:
    env = dict(value.split("=", 1) for value in _values(service["Service"], "Environment"))
    assert {"OLLAMA_HOST", "OLLAMA_MODELS", "POLLAMA_API_KEYS_FILE", "POLLAMA_SHUTDOWN_GRACE"} <= set(env)
    settings = Settings.from_env({k: v for k, v in env.items() if k != "POLLAMA_API_KEYS_FILE"})
    assert settings.models == Path("/var/lib/pollama/models")
    assert str(settings.models).startswith(env["HOME"])
    # TLS is shown, commented out: both variables, as pollama needs the pair.
    text = (DEPLOY / "pollama.service").read_text()
    assert "#Environment=POLLAMA_TLS_CERT=" in text and "#Environment=POLLAMA_TLS_KEY=" in text


def test_unit_hardening_still_lets_it_write_the_models(service: dict[str, list[tuple[str, str]]]) -> None:
    main = service["Service"]
    assert _one(main, "NoNewPrivileges") == "yes"
    assert _one(main, "ProtectSystem") == "strict"  # everything read-only ...
    assert _one(main, "StateDirectory") == "pollama"  # ... but /var/lib/pollama, owned by the service user
    env = dict(value.split("=", 1) for value in _values(main, "Environment"))
    assert env["OLLAMA_MODELS"].startswith("/var/lib/pollama/")
    assert _one(main, "PrivateTmp") == "yes"  # the runners' sockets
    assert "AF_UNIX" in _one(main, "RestrictAddressFamilies").split()
    assert not _values(main, "MemoryDenyWriteExecute")


def test_unit_stop_outlasts_the_shutdown_grace(service: dict[str, list[tuple[str, str]]]) -> None:
    main = service["Service"]
    env = dict(value.split("=", 1) for value in _values(main, "Environment"))
    grace = Settings.from_env({"POLLAMA_SHUTDOWN_GRACE": env["POLLAMA_SHUTDOWN_GRACE"]}).shutdown_grace
    assert grace == Settings.from_env({}).shutdown_grace == 10
    assert _one(main, "KillSignal") == "SIGTERM"
    assert _one(main, "KillMode") == "mixed"  # SIGTERM to pollama only: it stops its runners itself
    assert grace + 2 <= _seconds(_one(main, "TimeoutStopSec")) <= grace + 30


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists and that the user does: point them at this machine's.
    text = (DEPLOY / "pollama.service").read_text()
    text = text.replace("ExecStart=/opt/pollama/bin/pollama", f"ExecStart={sys.executable} -m pollama")
    text = text.replace("User=pollama", "User=root").replace("Group=pollama", "Group=root")
    unit = tmp_path / "pollama.service"
    unit.write_text(text)
    run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def _instructions(text: str) -> list[tuple[str, str]]:
    """The instructions of a Containerfile (continuation lines joined), as (INSTRUCTION, arguments)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_container_recipe() -> None:
    steps = _instructions((DEPLOY / "Containerfile").read_text())
    stages = [args for word, args in steps if word == "FROM"]
    assert len(stages) == 2 and all("python:3.11" in s for s in stages)
    final = steps[[i for i, (word, _) in enumerate(steps) if word == "FROM"][-1] :]
    words = [word for word, _ in final]
    # Built from this checkout, llama-cpp-python compiled in the build stage.
    build = steps[: len(steps) - len(final)]
    assert ("COPY", "pollama ./pollama") in build and any("pip wheel" in a for w, a in build if w == "RUN")
    assert "build-essential" in " ".join(a for w, a in build if w == "RUN")
    # Runs as a user of its own (never root), with the models on a volume it owns.
    (user,) = [args for word, args in final if word == "USER"]
    assert user not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    env = " ".join(args for word, args in final if word == "ENV")
    assert "OLLAMA_MODELS=/models" in env and "OLLAMA_HOST=0.0.0.0:11434" in env
    assert ("VOLUME", '["/models"]') in final
    assert any("chown pollama:pollama /models" in args for word, args in final if word == "RUN")
    (health,) = [args for word, args in final if word == "HEALTHCHECK"]
    assert "http://127.0.0.1:11434/health" in health
    assert ("ENTRYPOINT", '["pollama"]') in final and ("CMD", '["serve"]') in final
    assert ("STOPSIGNAL", "SIGTERM") in final and ("EXPOSE", "11434") in final


def test_readme_shows_both_files() -> None:
    readme = README.read_text()
    section = readme[readme.index("## Running pollama in production") :]
    section = section[: section.index("\n## ", 1)]
    for name in ("pollama.service", "Containerfile"):
        body = (DEPLOY / name).read_text()
        # The README shows the file's working lines (its comments may be shortened).
        for line in body.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert line in section, f"README misses {name}: {line}"
