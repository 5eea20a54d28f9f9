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
import pytest
from fastapi.testclient import TestClient

from pollama.config import Settings
from pollama.server.app import create_app
from tests.conftest import ServerProcess

jsonschema = pytest.importorskip("jsonschema")

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
    ids = [op["operationId"] for path, ops in document["paths"].items() if path.startswith("/v1/")
           for op in ops.values()]
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
            bodies.append({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}],
                           "max_tokens": 1, "input": "x", "prompt": "x", field: value})
        for body in bodies:
            r = (app_client.post(path, content=body) if isinstance(body, bytes)
                 else app_client.post(path, json=body))
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
