"""Regression tests for what schemathesis found wrong in ``/openapi.json`` (``pollama/server/openapi_docs.py``):
``/`` said JSON but answers text, the native routes had empty success schemas and no NDJSON media type,
copy/delete/blob answers have no body (and a stored blob is a 201), event streams were documented as a
string instead of event by event, and a path parameter that cannot match answers a plain-text 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from pollama.config import Settings
from pollama.server.app import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(Settings(models=Path(tmp_path_factory.mktemp("models"))))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()  # type: ignore[no-any-return]


def _ok(document: dict[str, Any], path: str, method: str, status: str = "200") -> dict[str, Any]:
    return document["paths"][path][method]["responses"][status]  # type: ignore[no-any-return]


def test_root_is_documented_as_the_text_it_answers(client: TestClient, document: dict[str, Any]) -> None:
    assert list(_ok(document, "/", "get")["content"]) == ["text/plain"]
    r = client.get("/")
    assert r.headers["content-type"].startswith("text/plain") and r.text == "Ollama is running"
    assert "content" not in _ok(document, "/", "head")


def test_native_success_answers_have_schemas_the_answers_meet(client: TestClient, document: dict[str, Any]) -> None:
    for path, method in [("/api/version", "get"), ("/api/tags", "get"), ("/api/ps", "get")]:
        schema = _ok(document, path, method)["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and schema["required"], path
        jsonschema.validate(client.request(method.upper(), path).json(), schema)
    # A schema that says something: a list entry without a name does not validate.
    tags = _ok(document, "/api/tags", "get")["content"]["application/json"]["schema"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"models": [{"model": "x"}]}, tags)


def test_streaming_native_routes_document_ndjson(document: dict[str, Any]) -> None:
    for path in ("/api/generate", "/api/chat", "/api/create", "/api/pull", "/api/push"):
        content = _ok(document, path, "post")["content"]
        assert set(content) == {"application/json", "application/x-ndjson"}, path
        assert content["application/json"]["schema"] == content["application/x-ndjson"]["schema"]
    chat = _ok(document, "/api/chat", "post")["content"]["application/json"]["schema"]
    jsonschema.validate(
        {"model": "m", "created_at": "2026-12-01T00:00:00Z", "message": {"role": "assistant", "content": ""}}, chat
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "m", "created_at": "t", "message": {"role": "assistant"}}, chat)


def test_bodiless_answers_and_the_201_of_a_stored_blob(client: TestClient, document: dict[str, Any]) -> None:
    assert "content" not in _ok(document, "/api/copy", "post")
    assert "content" not in _ok(document, "/api/delete", "delete")
    upload = document["paths"]["/api/blobs/{digest}"]["post"]["responses"]
    assert {"200", "201"} <= set(upload) and "422" not in upload
    digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256("hello")
    r = client.post(f"/api/blobs/{digest}", content=b"hello")
    assert r.status_code == 201 and r.content == b""
    assert client.post(f"/api/blobs/{digest}", content=b"hello").status_code == 200


def test_event_streams_are_documented_event_by_event(document: dict[str, Any]) -> None:
    streams = [
        response["content"]["text/event-stream"]["schema"]
        for operations in document["paths"].values()
        for operation in operations.values()
        for response in operation["responses"].values()
        if "text/event-stream" in response.get("content", {})
    ]
    assert len(streams) == 4  # chat/completions, completions, responses, messages
    for schema in streams:
        jsonschema.validate({"event": "message_start", "data": '{"type":"message_start"}'}, schema)
        jsonschema.validate({"data": "[DONE]"}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate("data: [DONE]", schema)


def test_an_unmatchable_path_parameter_is_a_documented_plain_404(client: TestClient, document: dict[str, Any]) -> None:
    r = client.head("/api/blobs/a%0Ab")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
    for method in ("head", "post"):
        missing = document["paths"]["/api/blobs/{digest}"][method]["responses"]["404"]
        assert "text/plain" in missing["content"], method


def test_oci_routes_document_their_json_404_and_unique_operations(client: TestClient, document: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, media_type in (
        ("/v2/{name}/manifests/{reference}", "application/vnd.docker.distribution.manifest.v2+json"),
        ("/v2/{name}/blobs/{digest}", "application/octet-stream"),
    ):
        assert media_type in _ok(document, path, "get")["content"]
        for method in ("get", "head"):
            assert "application/json" in _ok(document, path, method, "404")["content"]
    r = client.get("/v2/0/blobs/0")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    r = client.get("/v2/0/manifests/0")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
