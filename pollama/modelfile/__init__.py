"""Modelfiles: Ollama's parser (``parser``), writer (``writer``) and PARAMETER typing (``params``).

``request`` turns parsed commands into an ``/api/create`` request, as Ollama's CLI does.
"""

from __future__ import annotations

from pollama.modelfile.params import (
    DEFAULT_OPTIONS,
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    Options,
    ParamType,
    parse_parameter_value,
    typed_parameters,
    validate_options,
)
from pollama.modelfile.parser import Command, decode_modelfile, parse_modelfile
from pollama.modelfile.writer import (
    format_command,
    format_modelfile,
    quote,
    render_parameters,
    render_show_modelfile,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "DEPRECATED_PARAMETERS",
    "PARAMETER_TYPES",
    "Command",
    "Options",
    "ParamType",
    "decode_modelfile",
    "format_command",
    "format_modelfile",
    "parse_modelfile",
    "parse_parameter_value",
    "quote",
    "render_parameters",
    "render_show_modelfile",
    "typed_parameters",
    "validate_options",
]
