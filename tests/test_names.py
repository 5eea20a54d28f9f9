"""Model names: Ollama's parsing, defaults, validity rules and display form."""

from __future__ import annotations

import pytest

from pollama.errors import InvalidModelName
from pollama.names import ModelName, parse_name


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("mistral", ("registry.ollama.ai", "library", "mistral", "latest"), "mistral:latest"),
        ("mistral:7b", ("registry.ollama.ai", "library", "mistral", "7b"), "mistral:7b"),
        ("jmorgan/m:7b", ("registry.ollama.ai", "jmorgan", "m", "7b"), "jmorgan/m:7b"),
        ("example.com:5000/ns/m", ("example.com:5000", "ns", "m", "latest"), "example.com:5000/ns/m:latest"),
        ("registry.ollama.ai/library/llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b"), "llama3.2:1b"),
        ("REGISTRY.OLLAMA.AI/Library/Qwen:Tag", ("REGISTRY.OLLAMA.AI", "Library", "Qwen", "Tag"), "Qwen:Tag"),
        ("hf.co/user/repo:Q4_K_M", ("hf.co", "user", "repo", "Q4_K_M"), "hf.co/user/repo:Q4_K_M"),
        (
            "Model.Name_v1-2:Tag_1.0",
            ("registry.ollama.ai", "library", "Model.Name_v1-2", "Tag_1.0"),
            "Model.Name_v1-2:Tag_1.0",
        ),
        ("_x/_y:_z", ("registry.ollama.ai", "_x", "_y", "_z"), "_x/_y:_z"),
    ],
)
def test_parse_valid(text: str, parts: tuple[str, str, str, str], display: str) -> None:
    name = parse_name(text)
    assert name.parts == parts
    assert name.display == display


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":tag",
        "model:",
        "/model",
        "ns/",
        "a/b/c/d",
        "-model",
        ".model",
        "ns.with.dots/model",
        "model:tag/x",
        "mo del",
        "model:ta g",
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "m\x00x",
        "m" * 81,
        "m:" + "t" * 81,
        "h" * 351 + "/ns/m",
        "model@sha256:" + "a" * 64,
        "ftp://host/ns/m",
        "héllo",
        "ns/mod/el/x:y",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidModelName, match="invalid model name"):
        parse_name(text)


def test_custom_error_message() -> None:
    with pytest.raises(InvalidModelName, match='^name "x/" is invalid$'):
        parse_name("x/", error='name "x/" is invalid')


def test_scheme_and_limits() -> None:
    name = parse_name("http://localhost:5000/ns/m:t")
    assert name.scheme == "http"
    assert name.base_url == "http://localhost:5000"
    assert name.repository == "ns/m"
    assert parse_name("m" * 80).model == "m" * 80
    assert parse_name("h" * 350 + "/ns/m").host == "h" * 350


def test_case_insensitive_matching() -> None:
    a = parse_name("Mistral:Latest")
    b = parse_name("registry.ollama.ai/LIBRARY/mistral")
    assert a.matches(b)
    assert not a.matches(parse_name("mistral:7b"))
    assert isinstance(a, ModelName)
