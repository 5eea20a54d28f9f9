"""Turning a parsed Modelfile into an ``/api/create`` request, as Ollama's CLI does (spec §4.2).

``FROM``, ``ADAPTER`` and ``DRAFT`` paths are expanded (absolute, ``~``, ``~user``, else relative to the
Modelfile's folder); a path that exists names local files to upload, anything else names a model.
The caller hashes and uploads the files and fills in their digests.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollama.errors import ModelfileError

_SEMVER = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")

_WEIGHT_PATTERNS = (
    ("model*.safetensors", "*/model*.safetensors"),
    ("consolidated*.safetensors",),
    ("pytorch_model*.bin",),
    ("consolidated*.pth",),
    ("*.gguf",),
    ("*.bin",),
)
# A PEFT adapter folder: ``adapter_model.safetensors`` (MLX: ``adapters.safetensors``), else GGUF.
_ADAPTER_PATTERNS = (("adapter_model.safetensors", "adapters.safetensors"), ("*.safetensors",), ("*.gguf",), ("*.bin",))


@dataclass
class PreparedCreate:
    """A create request whose local files still have to be hashed and uploaded."""

    body: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)
    draft_files: dict[str, Path] = field(default_factory=dict)  # the DRAFT model (sent as ``draft_files``)
    warnings: list[str] = field(default_factory=list)


def expand_path(path: str, relative_dir: Path) -> Path:
    """Resolve a Modelfile path the way Ollama does."""
    if os.path.isabs(path):
        return Path(path)
    if path.startswith("~"):
        head, _, rest = path.partition("/")
        if head == "~":
            home = Path.home()
        else:
            try:
                home = Path(pwd.getpwnam(head[1:]).pw_dir)
            except KeyError:
                raise ModelfileError(f"user: unknown user {head[1:]}") from None
        return (home / rest).resolve() if rest else home
    return (relative_dir / path).resolve()


def local_files(path: Path, *, adapter: bool = False) -> dict[str, Path] | None:
    """The files a FROM/ADAPTER path stands for (``None`` if it does not exist).

    A file is itself, except a safetensors file (one shard of a Hugging Face folder), which stands
    for its folder; a folder is scanned for weights by Ollama's rules plus its JSON/tokenizer files
    (an adapter folder: its safetensors and ``adapter_config.json``). Names are relative to the
    folder (forward slashes), or the bare file name for a single file.
    """
    if path.is_file() and path.name.endswith(".safetensors"):
        path = path.parent
    elif path.is_file():
        return {path.name: path}
    if not path.is_dir():
        return None
    found: list[Path] = []
    for patterns in _ADAPTER_PATTERNS if adapter else _WEIGHT_PATTERNS:
        found = sorted(p for pattern in patterns for p in path.glob(pattern) if p.is_file())
        if found:
            break
    if not found:
        raise ModelfileError("no Modelfile or safetensors files found")
    if adapter and any(p.name.endswith(".safetensors") for p in found):
        extras, tokenizer = list(path.glob("adapter_config.json")), []
    else:
        extras = [*path.glob("*.json"), *path.glob("*/*.json"), *path.glob("chat_template.jinja")]
        tokenizer = list(path.glob("tokenizer.model")) or list(path.glob("*/tokenizer.model"))
    files: dict[str, Path] = {}
    root = path.resolve()
    for item in [*found, *extras, *tokenizer]:
        real = item.resolve()
        if root not in real.parents:
            raise ModelfileError(f"insecure path: {item.relative_to(path).as_posix()}")
        files[item.relative_to(path).as_posix()] = real
    return files


def prepare_create(commands: list[Any], relative_dir: Path, *, typed_parameters: Any) -> PreparedCreate:
    """Build the create request for ``commands`` (``Command(name, args)`` from the parser).

    ``typed_parameters`` turns ``[(name, value), ...]`` PARAMETER pairs into the typed dict (and
    raises ``ParameterError`` for a bad name or value).
    """
    prepared = PreparedCreate()
    body = prepared.body
    params: list[tuple[str, str]] = []
    licenses: list[str] = []
    messages: list[dict[str, str]] = []
    from_paths: list[Path] = []
    draft: tuple[str, Path] | None = None
    for command in commands:
        name, args = command.name, command.args
        if name == "model":
            path = expand_path(args, relative_dir)
            files = local_files(path)
            if files is None and (
                args.startswith(("/", "./", "../", "~", ".\\"))
                or args in (".", "..")
                or args.lower().endswith((".gguf", ".safetensors"))
            ):
                # a path, not a model name: say so instead of sending it on as one ("invalid model name")
                raise ModelfileError(f"FROM {args}: file {path} does not exist")
            if files is None:
                body["from"] = args
            else:
                from_paths.append(path)
                prepared.files.update(files)
        elif name == "adapter":
            files = local_files(expand_path(args, relative_dir), adapter=True)
            if files is None:
                raise ModelfileError(f"open {args}: no such file or directory")
            prepared.adapters = files
        elif name == "draft":
            path = expand_path(args, relative_dir)
            files = local_files(path)
            if files is None:
                raise ModelfileError(f"open {args}: no such file or directory")
            draft = (args, path)
            prepared.draft_files = files
        elif name == "requires":
            version = args[1:] if args.startswith("v") else args
            if not _SEMVER.fullmatch(version):
                raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)")
            body[name] = version
        elif name in ("template", "system", "renderer", "parser"):
            body[name] = args
        elif name == "license":
            licenses.append(args)
        elif name == "message":
            role, _, content = args.partition(": ")
            messages.append({"role": role, "content": content})
        else:
            params.append((name, args))
    if draft is not None and any(_same_path(draft[1], p) for p in from_paths):
        raise ModelfileError(f"DRAFT must not reference the same local path as FROM: {draft[0]}")
    if params:
        typed = typed_parameters(params, warnings=prepared.warnings)
        if typed:
            body["parameters"] = typed
    if licenses:
        body["license"] = licenses
    if messages:
        body["messages"] = messages
    return prepared


def _same_path(a: Path, b: Path) -> bool:
    """Whether two existing paths name the same file or folder (links and ``..`` resolved)."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False
