"""Model parameters: their names, types and runtime defaults (spec §4.3), and turning text or JSON into them.

* :func:`typed_parameters` is the Modelfile/CLI path (Ollama's ``api.FormatParams`` as used by
  ``Modelfile.CreateRequest``): text values parsed with Go's ``strconv`` rules, ``stop``
  accumulating, other names last-wins, deprecated names dropped with a warning, unknown names an
  error. Names are case-sensitive, as Ollama matches them against its JSON tags.
* :func:`validate_options` is the API path (Ollama's ``Options.FromMap``) for ``options`` objects
  and stored ``params`` layers: JSON values type-checked, unknown keys ignored.
* :class:`Options` holds the defaults and merges layers (defaults → model params → request options).

Errors are :class:`~pollama.errors.ParameterError` with Ollama's messages.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pollama.errors import ParameterError
from pollama.modelfile._gofmt import go_quote
from pollama.template.gostrconv import underscore_ok

logger = logging.getLogger(__name__)


class ParamType(enum.Enum):
    """The Go type of an ``api.Options`` field, which decides how a value is parsed and checked."""

    INT = "int"
    FLOAT = "float32"
    BOOL = "bool"
    OPTIONAL_INT = "*int"
    OPTIONAL_BOOL = "*bool"
    STRING_LIST = "[]string"


PARAMETER_TYPES: Mapping[str, ParamType] = MappingProxyType(
    {
        "num_ctx": ParamType.INT,
        "num_batch": ParamType.INT,
        "num_gpu": ParamType.INT,
        "main_gpu": ParamType.OPTIONAL_INT,
        "use_mmap": ParamType.OPTIONAL_BOOL,
        "num_thread": ParamType.INT,
        "draft_num_predict": ParamType.INT,
        "draft_max": ParamType.OPTIONAL_INT,  # pollama: prompt-lookup speculation (llama-server's --draft-max)
        "draft_min": ParamType.OPTIONAL_INT,  # pollama: shortest draft worth verifying (--draft-min)
        "num_keep": ParamType.INT,
        "seed": ParamType.INT,
        "num_predict": ParamType.INT,
        "top_k": ParamType.INT,
        "top_p": ParamType.FLOAT,
        "min_p": ParamType.FLOAT,
        "typical_p": ParamType.FLOAT,
        "repeat_last_n": ParamType.INT,
        "temperature": ParamType.FLOAT,
        "repeat_penalty": ParamType.FLOAT,
        "presence_penalty": ParamType.FLOAT,
        "frequency_penalty": ParamType.FLOAT,
        "stop": ParamType.STRING_LIST,
    }
)
"""Every parameter Ollama knows (the JSON tags of ``api.Options``), with its type."""

DEPRECATED_PARAMETERS = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
"""Accepted in a Modelfile with ``warning: parameter X is deprecated``, then dropped."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_GO_BOOLS = MappingProxyType(
    {
        **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
        **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
    }
)
_DECIMAL_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+")
_DECIMAL_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Options:
    """Ollama's runtime options with their current defaults (spec §4.3).

    ``num_ctx`` here is the fallback; the server replaces it with ``OLLAMA_CONTEXT_LENGTH`` or the
    VRAM-based default. ``main_gpu`` and ``use_mmap`` are ``None`` when unset (automatic).
    """

    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0
    draft_num_predict: int = 0
    draft_max: int | None = None  # unset: the runner's default (8); 0 turns speculation off
    draft_min: int | None = None
    num_keep: int = 4
    seed: int = -1
    num_predict: int = -1
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    temperature: float = 0.8
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()

    def with_options(self, *layers: Mapping[str, Any] | None) -> Options:
        """A copy with each layer (a ``params`` layer, then request ``options``) applied in turn.

        Each layer goes through :func:`validate_options`, so unknown keys and ``null`` values are
        ignored and a value of the wrong type raises :class:`ParameterError`.
        """
        changes: dict[str, Any] = {}
        for layer in layers:
            if layer:
                changes.update(validate_options(layer))
        if "stop" in changes:
            changes["stop"] = tuple(changes["stop"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (``stop`` as a list)."""
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data


DEFAULT_OPTIONS = Options()
"""The built-in defaults (an immutable instance)."""


# --- Modelfile / CLI text values ------------------------------------------------------------------


def typed_parameters(pairs: Iterable[tuple[str, str]], *, warnings: list[str] | None = None) -> dict[str, Any]:
    """Turn PARAMETER ``(name, value)`` text pairs into typed values, as Ollama's CLI does.

    ``stop`` collects every value into a list; any other repeated name keeps its last value.
    Floats are ``float32`` values (returned as the Python float that prints like Go's JSON for
    them, e.g. ``0.95``), ints are ``int64``. A deprecated name is skipped and its warning appended
    to ``warnings`` (if given). Raises :class:`ParameterError`: ``unknown parameter 'x'``,
    ``invalid int value [x]``, ``invalid float value [x]`` or ``invalid bool value [x]``.
    """
    typed: dict[str, Any] = {}
    for name, text in pairs:
        if name in DEPRECATED_PARAMETERS:
            if warnings is not None:
                warnings.append(f"warning: parameter {name} is deprecated")
            continue
        kind = PARAMETER_TYPES.get(name)
        if kind is None:
            raise ParameterError(f"unknown parameter '{name}'")
        if kind is ParamType.STRING_LIST:
            typed.setdefault(name, []).append(text)
        else:
            typed[name] = parse_parameter_value(kind, text)
    return typed


def parse_parameter_value(kind: ParamType, text: str) -> Any:
    """One text value parsed for a parameter of type ``kind`` with Go's ``strconv`` rules."""
    if kind in (ParamType.INT, ParamType.OPTIONAL_INT):
        value = _parse_int64(text)
        if value is None:
            raise ParameterError(f"invalid int value [{text}]")
        return value
    if kind is ParamType.FLOAT:
        number = _parse_float32(text)
        if number is None:
            raise ParameterError(f"invalid float value [{text}]")
        if not math.isfinite(number):  # Go parses it, then cannot encode the request as JSON
            raise ParameterError(f"json: unsupported value: {_go_special(number)}")
        return number
    if kind in (ParamType.BOOL, ParamType.OPTIONAL_BOOL):
        if text not in _GO_BOOLS:
            raise ParameterError(f"invalid bool value [{text}]")
        return _GO_BOOLS[text]
    if kind is ParamType.STRING_LIST:
        return [text]
    raise ParameterError(f"unknown type loading config params: {kind.value}")


def _parse_int64(text: str) -> int | None:
    """``strconv.ParseInt(text, 10, 64)``, or ``None`` where Go returns an error."""
    if not _DECIMAL_INT.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _parse_float32(text: str) -> float | None:
    """``strconv.ParseFloat(text, 32)`` (shortest decimal of the float32), or ``None`` on error."""
    special = _go_special_float(text)
    if special is not None:
        return special
    if "_" in text:
        if not underscore_ok(text):
            return None
        text = text.replace("_", "")
    try:
        if _DECIMAL_FLOAT.fullmatch(text):
            wide = float(text)
        elif _HEX_FLOAT.fullmatch(text):
            wide = float.fromhex(text)
        else:
            return None
        single = struct.unpack("<f", struct.pack("<f", wide))[0]
    except OverflowError:  # beyond float32 range: Go's ErrRange
        return None
    if math.isinf(single):
        return None
    return _shortest_float32(single)


def _shortest_float32(value: float) -> float:
    """The float64 of the shortest decimal that reads back as the float32 ``value``."""
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
                return candidate
        except OverflowError:  # rounded up past the float32 range: needs more digits
            continue
    return value


def _go_special_float(text: str) -> float | None:
    """Go's ``special``: ``[+-]inf``, ``[+-]infinity`` and ``nan``, any case."""
    lower = text.lower()
    unsigned = lower[1:] if lower[:1] in ("+", "-") else lower
    if unsigned in ("inf", "infinity"):
        return -math.inf if lower.startswith("-") else math.inf
    if lower == "nan":
        return math.nan
    return None


def _go_special(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


# --- API JSON values ------------------------------------------------------------------------------


# Mirostat is gone from Ollama's options (its PARAMETER names are deprecated and dropped), but
# llama.cpp still samples with it, so pollama's API accepts these three in ``options``.
_SAMPLER_EXTENSIONS = {"mirostat": ParamType.INT, "mirostat_tau": ParamType.FLOAT, "mirostat_eta": ParamType.FLOAT}


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check an ``options`` object (JSON values) as Ollama's ``Options.FromMap`` does.

    Returns the known, non-null options normalized: ints for integer options (JSON floats are
    truncated), floats for float options (ints accepted), bools, and ``stop`` as a list of strings.
    Unknown keys are logged and dropped. Raises :class:`ParameterError` with Ollama's message,
    e.g. ``option "stop" must be of type array``.
    """
    normalized: dict[str, Any] = {}
    for key, value in options.items():
        kind = PARAMETER_TYPES.get(key) or _SAMPLER_EXTENSIONS.get(key)
        if kind is None:
            logger.warning("invalid option provided: option=%s", key)
            continue
        if value is None:
            continue
        normalized[key] = _check_option(key, kind, value)
    return normalized


def _check_option(key: str, kind: ParamType, value: Any) -> Any:
    quoted = go_quote(key)
    if kind in (ParamType.INT, ParamType.OPTIONAL_INT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"option {quoted} must be of type integer")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ParameterError(f"option {quoted} must be of type integer")
            return int(value)  # Go's int64(f) truncates toward zero
        return value
    if kind in (ParamType.BOOL, ParamType.OPTIONAL_BOOL):
        if not isinstance(value, bool):
            raise ParameterError(f"option {quoted} must be of type boolean")
        return value
    if kind is ParamType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"option {quoted} must be of type float32")
        return float(value)
    if kind is ParamType.STRING_LIST:
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"option {quoted} must be of type array")
        if not all(isinstance(item, str) for item in value):
            raise ParameterError(f"option {quoted} must be of an array of strings")
        return list(value)
    raise ParameterError(f"unknown type loading config params: {kind.value} {key}")
