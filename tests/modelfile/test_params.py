"""PARAMETER typing (Modelfile text → typed values), API ``options`` validation, and the defaults."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pollama.errors import ParameterError
from pollama.modelfile import (
    DEFAULT_OPTIONS,
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    Options,
    parse_modelfile,
    typed_parameters,
    validate_options,
)
from pollama.modelfile.request import prepare_create
from pollama.store.files import go_json


def test_typed_parameters_types() -> None:
    typed = typed_parameters(
        [
            ("num_ctx", "8192"),
            ("seed", "-1"),
            ("num_predict", "+42"),
            ("temperature", "0.7"),
            ("top_p", "1"),
            ("min_p", ".05"),
            ("repeat_penalty", "1e0"),
            ("use_mmap", "T"),
            ("main_gpu", "0"),
            ("stop", "</s>"),
        ]
    )
    assert typed == {
        "num_ctx": 8192,
        "seed": -1,
        "num_predict": 42,
        "temperature": 0.7,
        "top_p": 1.0,
        "min_p": 0.05,
        "repeat_penalty": 1.0,
        "use_mmap": True,
        "main_gpu": 0,
        "stop": ["</s>"],
    }
    assert isinstance(typed["num_ctx"], int) and isinstance(typed["top_p"], float)


def test_floats_are_float32_printed_shortest() -> None:
    # Go parses with 32 bits and encodes the float32 shortest: 0.1 stays "0.1", 1/3 is 7-8 digits.
    typed = typed_parameters(
        [
            ("temperature", "0.1"),
            ("top_p", "0.3333333333333"),
            ("min_p", "1e-10"),
            ("typical_p", "0x1p-2"),
            ("repeat_penalty", "1_000.5"),
        ]
    )
    assert go_json(typed) == (
        b'{"temperature":0.1,"top_p":0.33333334,"min_p":1e-10,"typical_p":0.25,"repeat_penalty":1000.5}\n'
    )


def test_stop_accumulates_and_others_last_wins() -> None:
    typed = typed_parameters(
        [("stop", "a"), ("temperature", "0.1"), ("stop", "b"), ("temperature", "0.9"), ("stop", "a")]
    )
    assert typed == {"stop": ["a", "b", "a"], "temperature": 0.9}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num_ctx", "abc", "invalid int value [abc]"),
        ("num_ctx", "1.5", "invalid int value [1.5]"),
        ("num_ctx", "", "invalid int value []"),
        ("num_ctx", "1_000", "invalid int value [1_000]"),
        ("seed", "9223372036854775808", "invalid int value [9223372036854775808]"),
        ("num_ctx", "٣", "invalid int value [٣]"),  # only ASCII digits
        ("temperature", "hot", "invalid float value [hot]"),
        ("temperature", "1e39", "invalid float value [1e39]"),  # beyond float32
        ("temperature", "1__0", "invalid float value [1__0]"),
        ("temperature", "0x1", "invalid float value [0x1]"),  # hex needs a p exponent
        ("temperature", "+nan", "invalid float value [+nan]"),
        ("top_p", "0.9 0.8", "invalid float value [0.9 0.8]"),
        ("use_mmap", "yes", "invalid bool value [yes]"),
        ("use_mmap", "tRUE", "invalid bool value [tRUE]"),
    ],
)
def test_bad_values(name: str, value: str, message: str) -> None:
    with pytest.raises(ParameterError) as info:
        typed_parameters([(name, value)])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "name", ["TEMPERATURE", "Stop", "tfs_z", "numa", "num_gqa", "rope_frequency_base", "param1", ""]
)
def test_unknown_parameters(name: str) -> None:
    with pytest.raises(ParameterError) as info:
        typed_parameters([(name, "1")])
    assert str(info.value) == f"unknown parameter '{name}'"


def test_deprecated_parameters_dropped_with_warning() -> None:
    warnings: list[str] = []
    typed = typed_parameters([("mirostat", "2"), ("penalize_newline", "maybe"), ("seed", "3")], warnings=warnings)
    assert typed == {"seed": 3}
    assert warnings == [
        "warning: parameter mirostat is deprecated",
        "warning: parameter penalize_newline is deprecated",
    ]
    assert "use_mlock" in DEPRECATED_PARAMETERS
    assert typed_parameters([("use_mlock", "true")]) == {}


def test_modelfile_to_create_request_parameters(tmp_path: Any) -> None:
    commands = parse_modelfile(
        "FROM llama3.2\nPARAMETER temperature 0.5\nPARAMETER stop <|eot_id|>\n"
        'PARAMETER stop "User: "\nPARAMETER num_ctx 2048\n'
    )
    prepared = prepare_create(commands, tmp_path, typed_parameters=typed_parameters)
    assert prepared.body == {
        "from": "llama3.2",
        "parameters": {"temperature": 0.5, "stop": ["<|eot_id|>", "User: "], "num_ctx": 2048},
    }


# --- API options ------------------------------------------------------------------------------------


def test_validate_options_normalizes() -> None:
    options = validate_options(
        {
            "num_ctx": 2048.9,
            "num_predict": -3.7,
            "temperature": 1,
            "top_p": 0.5,
            "use_mmap": False,
            "stop": ["a", "b"],
            "seed": 7,
            "main_gpu": None,
            "unknown": "ignored",
            "mirostat": 2,
            "use_mlock": True,
        }
    )
    # mirostat is a pollama extension (llama.cpp still samples with it); use_mlock stays dropped.
    assert options == {
        "num_ctx": 2048,
        "num_predict": -3,
        "temperature": 1.0,
        "top_p": 0.5,
        "use_mmap": False,
        "stop": ["a", "b"],
        "seed": 7,
        "mirostat": 2,
    }
    assert isinstance(options["temperature"], float)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stop": "x"}, 'option "stop" must be of type array'),
        ({"stop": ["x", 1]}, 'option "stop" must be of an array of strings'),
        ({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": True}, 'option "num_ctx" must be of type integer'),
        ({"main_gpu": "0"}, 'option "main_gpu" must be of type integer'),
        ({"temperature": "0.1"}, 'option "temperature" must be of type float32'),
        ({"temperature": False}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"top_k": [1]}, 'option "top_k" must be of type integer'),
    ],
)
def test_validate_options_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as info:
        validate_options(options)
    assert str(info.value) == message


def test_validate_options_accepts_json_round_trip() -> None:
    stored = json.loads(go_json(typed_parameters([("temperature", "0.5"), ("stop", "x"), ("num_ctx", "8")])))
    assert validate_options(stored) == {"temperature": 0.5, "stop": ["x"], "num_ctx": 8}


# --- defaults -----------------------------------------------------------------------------------------


def test_defaults_match_spec() -> None:
    assert Options() == DEFAULT_OPTIONS
    assert DEFAULT_OPTIONS.to_dict() == {
        "num_ctx": 4096,
        "num_batch": 512,
        "num_gpu": -1,
        "main_gpu": None,
        "use_mmap": None,
        "num_thread": 0,
        "draft_num_predict": 0,
        "draft_max": None,
        "draft_min": None,
        "num_keep": 4,
        "seed": -1,
        "num_predict": -1,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_last_n": 64,
        "temperature": 0.8,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": [],
    }
    assert set(PARAMETER_TYPES) == set(DEFAULT_OPTIONS.to_dict())


def test_options_layers() -> None:
    merged = DEFAULT_OPTIONS.with_options(
        {"temperature": 0.2, "stop": ["a"], "num_ctx": 8192}, None, {"temperature": 0.9, "top_k": 5.0, "x": 1}
    )
    assert (merged.temperature, merged.stop, merged.num_ctx, merged.top_k) == (0.9, ("a",), 8192, 5)
    assert DEFAULT_OPTIONS.temperature == 0.8  # unchanged
    with pytest.raises(ParameterError):
        DEFAULT_OPTIONS.with_options({"stop": "a"})


def test_non_finite_float_cannot_be_sent() -> None:
    with pytest.raises(ParameterError) as info:
        typed_parameters([("temperature", "Inf")])
    assert str(info.value) == "json: unsupported value: +Inf"
    assert math.isclose(typed_parameters([("temperature", "3.4028235e38")])["temperature"], 3.4028235e38)
