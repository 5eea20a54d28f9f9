"""Model names: ``[scheme://][host/][namespace/]model[:tag]`` with Ollama's parsing, defaults and rules.

A ``ModelName`` is always complete: parts the text leaves out take Ollama's defaults
(``registry.ollama.ai``, ``library``, ``latest``). ``parse_name`` never guesses: text that Ollama would
reject raises ``InvalidModelName``. Because every part of a valid name is made of a few safe
characters and starts with a letter, digit or underscore, a valid name can never point outside the
``manifests/`` folder it is stored under.
"""

from __future__ import annotations

from dataclasses import dataclass

from pollama.errors import InvalidModelName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

_MISSING = "!MISSING!"  # a part that was promised by a separator but left empty: never valid
_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name. Compare with ``matches`` (case-insensitive), not ``==``."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @property
    def display(self) -> str:
        """Ollama's shortest form: ``model:tag``, ``namespace/model:tag`` or ``host/namespace/model:tag``."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """Every part spelled out: ``registry.ollama.ai/library/model:tag``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The path components of this name's manifest under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def repository(self) -> str:
        """The registry repository path, ``namespace/model``."""
        return f"{self.namespace}/{self.model}"

    @property
    def base_url(self) -> str:
        """The registry's base URL, ``scheme://host``."""
        return f"{self.scheme}://{self.host}"

    def key(self) -> tuple[str, str, str, str]:
        """A case-folded key: two names with the same key name the same model."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def matches(self, other: ModelName) -> bool:
        """True if both names refer to the same model (Ollama compares names case-insensitively)."""
        return self.key() == other.key()

    def __str__(self) -> str:
        return self.display


def _cut_last(text: str, sep: str) -> tuple[str, str, bool]:
    i = text.rfind(sep)
    if i < 0:
        return text, "", False
    return text[:i], text[i + len(sep) :], True


def _cut_promised(text: str, sep: str) -> tuple[str, str, bool]:
    """Cut at the last ``sep``; an empty side becomes a part that can never be valid."""
    before, after, found = _cut_last(text, sep)
    if not found:
        return before, after, False
    return before or _MISSING, after or _MISSING, True


def _split(text: str) -> dict[str, str]:
    """Split a name into its raw parts, right to left, exactly as Ollama's ``ParseNameBare`` does."""
    parts = {"scheme": "", "host": "", "namespace": "", "model": "", "tag": ""}
    if text.rfind(":") > text.rfind("/"):
        text, parts["tag"], _ = _cut_promised(text, ":")
    text, digest, found = _cut_last(text, "@")
    if found:
        parts["digest"] = digest or _MISSING
    if text.rfind(":") > text.rfind("/"):
        text, parts["tag"], _ = _cut_promised(text, ":")
    text, parts["model"], found = _cut_promised(text, "/")
    if not found:
        parts["model"] = text
        return parts
    text, parts["namespace"], found = _cut_promised(text, "/")
    if not found:
        parts["namespace"] = text
        return parts
    scheme, sep, host = text.partition("://")
    if sep:
        parts["scheme"], parts["host"] = scheme, host
    else:
        parts["host"] = text
    return parts


def _valid_part(kind: str, value: str) -> bool:
    if not 1 <= len(value) <= _MAX_LEN[kind]:
        return False
    if not (value[0].isascii() and (value[0].isalnum() or value[0] == "_")):
        return False
    for ch in value[1:]:
        if ch.isascii() and (ch.isalnum() or ch in "_-"):
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":
            continue
        return False
    return True


def parse_name(text: str, *, error: str | None = None) -> ModelName:
    """Parse ``text`` into a complete ``ModelName``, or raise ``InvalidModelName``.

    ``error`` is the message to raise with (Ollama's wording differs per endpoint); by default it is
    ``invalid model name``.
    """
    parts = _split(text)
    if "digest" in parts:
        raise InvalidModelName(error or "invalid model name")
    scheme = parts["scheme"] or DEFAULT_SCHEME
    name = ModelName(
        host=parts["host"] or DEFAULT_HOST,
        namespace=parts["namespace"] or DEFAULT_NAMESPACE,
        model=parts["model"],
        tag=parts["tag"] or DEFAULT_TAG,
        scheme=scheme,
    )
    if scheme not in ("http", "https") or not all(
        _valid_part(kind, value) for kind, value in zip(("host", "namespace", "model", "tag"), name.parts, strict=True)
    ):
        raise InvalidModelName(error or "invalid model name")
    return name


def is_valid_name(text: str) -> bool:
    """True if ``text`` parses as a model name."""
    try:
        parse_name(text)
    except InvalidModelName:
        return False
    return True
