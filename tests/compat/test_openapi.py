"""``/openapi.json`` describes every endpoint truthfully: the document renders, every ``$ref`` resolves,
every route is in it with a request schema, and real answers of the compatibility endpoints (success
and errors) validate against the response schemas it documents. A small type fuzzer checks that no
ill-typed body makes a compatibility endpoint fail with a 5xx."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from pollama.config import Settings
from pollama.server.app import create_app
from tests.conftest import ServerProcess

COMPAT_POSTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    models = tmp_path_factory.mktemp("models")
    app = create_app(Settings(models=Path(models)))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        client.app_routes = _routes(app.routes)  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="module")
def document(app_client: TestClient) -> dict[str, Any]:
    r = app_client.get("/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _routes(routes: Any) -> list[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, looking into included routers."""
    out = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            out.extend(_routes(included.routes))
        elif getattr(route, "methods", None) and getattr(route, "include_in_schema", True):
            out.append((route.path, set(route.methods)))
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def test_document_renders_and_refs_resolve(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    refs = set(_refs(document))
    assert refs, "expected component references"
    for ref in refs:
        _resolve(document, ref)
    assert "$defs" not in str(document)


def test_every_route_is_documented(app_client: TestClient, document: dict[str, Any]) -> None:
    routes = app_client.app_routes  # type: ignore[attr-defined]
    assert len(routes) > 15
    for path, methods in routes:
        if path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"):
            continue
        documented_path = path.replace(":path}", "}")
        assert documented_path in document["paths"], path
        operations = document["paths"][documented_path]
        for method in methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in operations, f"{method} {path}"


def test_request_bodies_have_schemas(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "put", "patch") or path.startswith("/api/blobs"):
                continue
            body = operation.get("requestBody")
            assert body is not None, f"{method} {path} has no requestBody"
            schema = body["content"]["application/json"]["schema"]
            assert schema.get("type") == "object" and schema.get("properties"), f"{method} {path}"


def test_compat_operation_ids_unique(document: dict[str, Any]) -> None:
    ids = [
        op["operationId"] for path, ops in document["paths"].items() if path.startswith("/v1/") for op in ops.values()
    ]
    assert len(ids) == len(set(ids))


def test_compat_responses_documented(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            responses = operation["responses"]
            assert {"200", "400", "500"} <= set(responses), path
            schema = responses["400"]["content"]["application/json"]["schema"]
            assert "$ref" in schema and _resolve(document, schema["$ref"])["type"] == "object"
            if path in COMPAT_POSTS and path != "/v1/embeddings":
                assert "text/event-stream" in responses["200"]["content"], path


def _validator(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    response = document["paths"][path][method]["responses"][str(status)]
    schema = dict(response["content"]["application/json"]["schema"])
    schema["components"] = document["components"]  # so that "#/components/..." resolves from this root
    return jsonschema.Draft202012Validator(schema)


def _bad_values() -> list[Any]:
    return [None, True, -1, 1.5, "x", "", [], [1], {}, {"a": 1}]


def test_ill_typed_bodies_never_fail_with_5xx(app_client: TestClient, document: dict[str, Any]) -> None:
    for path in COMPAT_POSTS:
        schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        error_schema = _validator(document, path, "post", 400)
        bodies: list[Any] = [b"", b"{", b"[]", b'"x"', b"null"]
        for field, value in itertools.product(schema["properties"], _bad_values()):
            bodies.append(
                {
                    "model": "no-such-model",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1,
                    "input": "x",
                    "prompt": "x",
                    field: value,
                }
            )
        for body in bodies:
            r = app_client.post(path, content=body) if isinstance(body, bytes) else app_client.post(path, json=body)
            assert r.status_code < 500, (path, body, r.text)
            assert r.status_code in (200, 400, 404), (path, body, r.text)
            if r.status_code == 400:
                error_schema.validate(r.json())


def test_real_answers_match_documented_schemas(smollm2_server: ServerProcess, document: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    calls = [
        ("post", "/v1/chat/completions", {"model": "smollm2", "messages": messages, "max_tokens": 4}),
        ("post", "/v1/completions", {"model": "smollm2", "prompt": "Hi", "max_tokens": 4}),
        ("post", "/v1/embeddings", {"model": "smollm2", "input": ["a", "b"]}),
        ("post", "/v1/embeddings", {"model": "smollm2", "input": "a", "encoding_format": "base64"}),
        ("post", "/v1/responses", {"model": "smollm2", "input": "Hi", "max_output_tokens": 4}),
        ("post", "/v1/messages", {"model": "smollm2", "messages": messages, "max_tokens": 4}),
        ("get", "/v1/models", None),
        ("get", "/v1/models/{model}", None),
    ]
    with httpx.Client(base_url=smollm2_server.url, timeout=120) as c:
        for method, path, body in calls:
            url = path.replace("{model}", "smollm2")
            r = c.request(method.upper(), url, json=body)
            assert r.status_code == 200, (path, r.text)
            _validator(document, path, method, 200).validate(r.json())
            missing = path.replace("{model}", "missing")
            if body is not None:
                r = c.request(method.upper(), missing, json={**body, "model": "missing"})
            else:
                r = c.request(method.upper(), missing)
            if r.status_code != 200:  # /v1/models lists; the others answer 404 for a missing model
                assert r.status_code == 404, (path, r.text)
                _validator(document, path, method, 404).validate(r.json())


NATIVE_REQUIRED = {
    ("/api/generate", "post"): {"required": ["model"]},
    ("/api/chat", "post"): {"required": ["model"]},
    ("/api/embed", "post"): {"required": ["model"]},
    ("/api/embeddings", "post"): {"required": ["model"]},
    ("/api/copy", "post"): {"required": ["source", "destination"]},
    ("/api/create", "post"): {"anyOf": [{"required": ["model"]}, {"required": ["name"]}]},
    ("/api/pull", "post"): {"anyOf": [{"required": ["model"]}, {"required": ["name"]}]},
    ("/api/push", "post"): {"anyOf": [{"required": ["model"]}, {"required": ["name"]}]},
    ("/api/show", "post"): {"anyOf": [{"required": ["model"]}, {"required": ["name"]}]},
    ("/api/delete", "delete"): {"anyOf": [{"required": ["model"]}, {"required": ["name"]}]},
}
NATIVE_ERRORS = {
    ("/api/generate", "post"): {"400", "404", "503"},
    ("/api/chat", "post"): {"400", "404", "503"},
    ("/api/embed", "post"): {"400", "404", "503"},
    ("/api/embeddings", "post"): {"400", "404", "503"},
    ("/api/show", "post"): {"400", "404"},
    ("/api/copy", "post"): {"400", "404"},
    ("/api/delete", "delete"): {"400", "404"},
    ("/api/create", "post"): {"400"},
    ("/api/pull", "post"): {"400"},
    ("/api/blobs/{digest}", "head"): {"400", "404"},
    ("/api/blobs/{digest}", "post"): {"400"},
}


def test_native_bodies_mark_required_fields(document: dict[str, Any]) -> None:
    for (path, method), expected in NATIVE_REQUIRED.items():
        schema = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        for key, value in expected.items():
            assert schema.get(key) == value, (path, key, schema.get(key))
    validator = jsonschema.Draft202012Validator(
        document["paths"]["/api/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    assert not validator.is_valid({"prompt": "hi"})
    assert validator.is_valid({"model": "m", "prompt": "hi"})
    show = document["paths"]["/api/show"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert jsonschema.Draft202012Validator(show).is_valid({"name": "m"})


def test_native_error_responses_documented(app_client: TestClient, document: dict[str, Any]) -> None:
    for (path, method), statuses in NATIVE_ERRORS.items():
        responses = document["paths"][path][method]["responses"]
        assert statuses <= set(responses), (path, method, set(responses))
        for status in statuses:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema["required"] == ["error"] and schema["properties"]["error"]["type"] == "string"
    # Real error answers validate against what is documented.
    checks = [
        ("post", "/api/generate", {"model": "missing", "prompt": "x"}, 404),
        ("post", "/api/generate", {"model": "m", "keep_alive": "300"}, 400),
        ("post", "/api/show", {"model": "missing"}, 404),
        ("delete", "/api/delete", {"model": "missing"}, 404),
        ("post", "/api/create", {"model": "x"}, 400),
    ]
    for method, path, body, status in checks:
        r = app_client.request(method.upper(), path, json=body)
        assert r.status_code == status, (path, r.text)
        _validator(document, path, method, status).validate(r.json())
    assert "503" in document["paths"]["/api/chat"]["post"]["responses"]
    assert "Retry-After" in document["paths"]["/api/chat"]["post"]["responses"]["503"]["description"]
