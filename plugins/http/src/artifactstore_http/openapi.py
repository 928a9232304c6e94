"""The OpenAPI 3.0 document of the REST API, served at ``/v1/openapi.json``.

Written out by hand rather than derived from handlers: the API is small, its paths carry percent-encoded
ids that routers cannot describe, and this document is what schemathesis checks the server against.
"""

from __future__ import annotations

from typing import Any

from artifactstore_core.envelope import PREFIX_SIZE

from .protocol import (
    ERROR_DETAIL_HEADER,
    ERROR_HEADER,
    INFO_SEGMENT,
    MAX_DETAIL_BYTES,
    MEDIA_TYPE_ENVELOPE,
    MEDIA_TYPE_PROBLEM,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
)
from .settings import head_allowance

__all__ = ["openapi_document"]

_PROBLEM_TEXT = {
    400: "Invalid namespace, step id or query parameter.",
    401: "Missing or invalid bearer token (the same body for every failure).",
    403: "The server's backend denied access.",
    404: "No such artifact (type ArtifactNotFoundError) or no such path (type NotFound).",
    405: "Method not allowed on this path.",
    409: "A different artifact exists under this step id (type ArtifactExistsError); overwrite=true replaces it.",
    413: "Request body, artifact content, JSON content, or the envelope's header (the JSON of its metadata and "
    "schema) larger than the server's limits (ARTIFACT_STORE_SERVER_MAX_BODY_BYTES, "
    "ARTIFACT_STORE_SERVER_MAX_JSON_BYTES).",
    422: "The body is not a valid envelope, or fails its digest or signature check.",
    431: "Too many request headers, or too large.",
    500: "Server misconfiguration or failure.",
    501: "The server's backend does not support the operation.",
    502: "The server's backend failed.",
    503: "The server's backend is unavailable, or the server is shutting down; retry.",
    504: "The server's backend timed out, or the server shut down before the request finished (it may or may "
    "not have happened); retry.",
    507: "The server's backend is full.",
}
# A save over the limits is refused, so only an artifact that something other than this server wrote to its
# backend can be over them when read.
_READ_TOO_LARGE = (
    "The stored artifact (written to the server's backend by something other than this server) holds JSON "
    "content or an envelope header (the JSON of its metadata and schema) over the server's JSON limit "
    "(ARTIFACT_STORE_SERVER_MAX_JSON_BYTES), which it does not parse: refused from the sizes its head states."
)
_INFO_TOO_LARGE = (
    "The stored artifact (written to the server's backend by something other than this server) has an envelope "
    "header (the JSON of its metadata and schema) over the server's JSON limit (ARTIFACT_STORE_SERVER_MAX_JSON_BYTES), "
    "which it does not parse: refused from the head's prefix. Or the answer itself (a media type or schema name "
    "of nearly that size) would be over that limit. The listing still shows the artifact."
)
_COMMON = (400, 401, 403, 404, 405, 431, 500, 501, 502, 503, 504)


def _problems(*statuses: int, body: bool = True, texts: dict[int, str] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted({*_COMMON, *statuses}):
        response: dict[str, Any] = {"description": (texts or {}).get(status, _PROBLEM_TEXT[status])}
        if body:
            response["content"] = {MEDIA_TYPE_PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        else:
            # No body (HEAD): the problem's type and detail are in headers.
            response["headers"] = {
                ERROR_HEADER: {"$ref": "#/components/headers/Error"},
                ERROR_DETAIL_HEADER: {"$ref": "#/components/headers/ErrorDetail"},
            }
        responses[str(status)] = response
    return responses


def _marked(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the protocol marker header declared on every response of every operation."""
    marker = {PROTOCOL_HEADER: {"$ref": "#/components/headers/Protocol"}}
    for item in document["paths"].values():
        for key, operation in item.items():
            if key != "parameters":
                for response in operation["responses"].values():
                    response["headers"] = {**response.get("headers", {}), **marker}
    return document


def openapi_document(
    *, max_body_bytes: int | None = None, max_json_bytes: int | None = None, path_prefix: str = ""
) -> dict[str, Any]:
    """The API description as a JSON-ready dict (OpenAPI 3.0.3).

    ``max_body_bytes`` and ``max_json_bytes`` (the server's limits) are stated in the descriptions when
    given. ``path_prefix`` (the server's, e.g. ``/artifactstore``) becomes the document's ``servers`` entry,
    so that a client generated from it calls the prefixed paths. Raises nothing.
    """
    document = _marked(_document(max_body_bytes, max_json_bytes))
    if path_prefix:
        # A relative server URL: resolved against wherever the document was fetched from.
        document["servers"] = [{"url": path_prefix}]
    return document


def _document(max_body_bytes: int | None, max_json_bytes: int | None) -> dict[str, Any]:
    limit = (
        f" At most {max_body_bytes} bytes of content (after decompression), the envelope's head on top."
        if max_body_bytes is not None
        else ""
    )
    json_limit = f" ({max_json_bytes} bytes)" if max_json_bytes is not None else ""
    allowance = (
        f": a head of at most {head_allowance(max_body_bytes, max_json_bytes)} bytes, its prefix and tag included"
        if max_body_bytes is not None and max_json_bytes is not None
        else ""
    )
    # The header is JSON the server parses, bounded like JSON content; the head's length is known from its
    # fixed prefix, so a head over the bound is refused before the server reads or parses the header.
    head = (
        f" JSON content is bounded by the server's JSON limit, ARTIFACT_STORE_SERVER_MAX_JSON_BYTES{json_limit}, "
        f"and so is the envelope's header (the JSON of its metadata and schema){allowance}. The head's length "
        f"is read from its {PREFIX_SIZE}-byte prefix, and a longer head gets 413 before its header is read or "
        "parsed. The server stores the header anew (canonical JSON), and also answers 413 to a header that "
        "would be over the bound once stored though it was sent under it."
    )
    namespace = {"$ref": "#/components/parameters/Namespace"}
    step_id = {"$ref": "#/components/parameters/StepId"}
    envelope = {MEDIA_TYPE_ENVELOPE: {"schema": {"type": "string", "format": "binary"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "artifactstore artifact server",
            "version": "1",
            "description": "Saves and reads pipeline artifacts in any configured artifactstore backend. Bodies are "
            "artifact envelopes (docs/format.md); ids are percent-encoded path segments (docs/http.md). Every "
            f"response carries {PROTOCOL_HEADER}: {PROTOCOL_VERSION}, by which clients tell this server from any "
            "other web server at a mistyped URL.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness probe (no authentication).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The server is up.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        }
                    },
                },
                # Answered, as load balancers' and orchestrators' probes may ask it: the document said GET only.
                "head": {
                    "operationId": "healthHead",
                    "summary": "Liveness probe without a body (no authentication).",
                    "security": [],
                    "responses": {"200": {"description": "The server is up."}},
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no authentication).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                },
                "head": {
                    "operationId": "openapiHead",
                    "summary": "This document's headers, without its body (no authentication).",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI document's headers."}},
                },
            },
            "/v1/namespaces/{namespace}": {
                "parameters": [namespace],
                "delete": {
                    "operationId": "clearNamespace",
                    "summary": "Remove every artifact of the namespace; returns how many were removed.",
                    "responses": {
                        "200": {
                            "description": "Removed.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Cleared"}}},
                        },
                        **_problems(),
                    },
                },
            },
            "/v1/namespaces/{namespace}/artifacts": {
                "parameters": [namespace],
                "get": {
                    "operationId": "listArtifacts",
                    "summary": "List the namespace's artifacts in step id order, a page at a time.",
                    "parameters": [
                        {"$ref": "#/components/parameters/Limit"},
                        {"$ref": "#/components/parameters/Cursor"},
                    ],
                    "responses": {
                        "200": {
                            "description": "One page.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}},
                        },
                        **_problems(),
                    },
                },
                "head": {
                    "operationId": "listArtifactsHead",
                    "summary": "A list page's status and headers (its Content-Length that of the page), without the "
                    f"page; problems carry their type in the {ERROR_HEADER} header and their detail in the "
                    f"{ERROR_DETAIL_HEADER} header.",
                    "parameters": [
                        {"$ref": "#/components/parameters/Limit"},
                        {"$ref": "#/components/parameters/Cursor"},
                    ],
                    "responses": {"200": {"description": "One page's headers."}, **_problems(body=False)},
                },
            },
            "/v1/namespaces/{namespace}/artifacts/{step_id}": {
                "parameters": [namespace, step_id],
                "put": {
                    "operationId": "saveArtifact",
                    "summary": "Save an artifact: write-once (an identical save succeeds), or replace with overwrite.",
                    "parameters": [{"$ref": "#/components/parameters/Overwrite"}],
                    "requestBody": {
                        "required": True,
                        "description": "The artifact envelope (docs/format.md), verified by the server." + limit + head,
                        "content": envelope,
                    },
                    "responses": {
                        "204": {"description": "Saved (or already saved, identical)."},
                        **_problems(409, 413, 422, 507),
                    },
                },
                "get": {
                    "operationId": "getArtifact",
                    "summary": "Read an artifact as its envelope.",
                    "responses": {
                        "200": {"description": "The artifact envelope.", "content": envelope},
                        **_problems(413, 422, texts={413: _READ_TOO_LARGE}),
                    },
                },
                "head": {
                    "operationId": "artifactExists",
                    "summary": f"Whether the artifact exists (200) or not (404, {ERROR_HEADER}: "
                    f"ArtifactNotFoundError); other errors carry their type in the {ERROR_HEADER} header and "
                    f"their detail in the {ERROR_DETAIL_HEADER} header. Answered without reading the artifact, so "
                    "without a Content-Length: the GET's length is known only once the artifact is encoded.",
                    "responses": {"200": {"description": "It exists."}, **_problems(body=False)},
                },
                "delete": {
                    "operationId": "deleteArtifact",
                    "summary": "Remove an artifact; says whether there was one.",
                    "responses": {
                        "200": {
                            "description": "Done.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deleted"}}},
                        },
                        **_problems(),
                    },
                },
            },
            f"/v1/namespaces/{{namespace}}/artifacts/{{step_id}}/{INFO_SEGMENT}": {
                "parameters": [namespace, step_id],
                "get": {
                    "operationId": "artifactInfo",
                    "summary": "An artifact's info (the item a list page holds for it), read from its head alone, "
                    "never from its payload. The server verifies the head with its store's codec (and its signature, "
                    "with a signing key); a client cannot verify this answer again, and trusts it as it trusts a "
                    "listing.",
                    "responses": {
                        "200": {
                            "description": "The artifact's info.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ArtifactInfo"}}},
                        },
                        **_problems(413, 422, texts={413: _INFO_TOO_LARGE}),
                    },
                },
                "head": {
                    "operationId": "artifactInfoHead",
                    "summary": "An artifact info's status and headers, without the info: 200 if the artifact "
                    f"exists and its head is valid, 404 ({ERROR_HEADER}: ArtifactNotFoundError) if not; problems "
                    f"carry their type in the {ERROR_HEADER} header and their detail in the {ERROR_DETAIL_HEADER} "
                    "header.",
                    "responses": {
                        "200": {"description": "The info's headers."},
                        **_problems(413, 422, body=False, texts={413: _INFO_TOO_LARGE}),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "Protocol": {
                    "description": "Marks every answer of an artifact server; clients trust no success "
                    "answer without it.",
                    "required": True,
                    "schema": {"type": "string", "enum": [PROTOCOL_VERSION]},
                },
                "Error": {
                    "description": "The problem's type (as the body's type), on every problem answer.",
                    "schema": {"type": "string"},
                },
                "ErrorDetail": {
                    "description": "On a problem answer to HEAD, which has no body: the problem's detail, "
                    "percent-encoded UTF-8 (every byte but visible ASCII and the space, and every %), cut to "
                    f"{MAX_DETAIL_BYTES} bytes of UTF-8 before encoding.",
                    "schema": {"type": "string"},
                },
            },
            "parameters": {
                "Namespace": {
                    "name": "namespace",
                    "in": "path",
                    "required": True,
                    "description": "The namespace, percent-encoded (every byte but letters, digits, - _ ~).",
                    "schema": {"type": "string", "minLength": 1},
                },
                "StepId": {
                    "name": "step_id",
                    "in": "path",
                    "required": True,
                    "description": "The step id, percent-encoded like the namespace.",
                    "schema": {"type": "string", "minLength": 1},
                },
                "Overwrite": {
                    "name": "overwrite",
                    "in": "query",
                    "required": False,
                    "description": "Replace a different existing artifact instead of answering 409. true or false "
                    "(also 1 or 0); no value (?overwrite) or another value is 400.",
                    "schema": {"type": "boolean", "default": False},
                },
                "Limit": {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "Most items of the page, in plain decimal digits; another value is 400.",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                },
                "Cursor": {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "The next_cursor of the previous page, unchanged; another value is 400.",
                    "schema": {"type": "string"},
                },
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "retryable"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "description": "A core error class name, or InvalidRequest, "
                            "NotFound, MethodNotAllowed, InternalServerError.",
                        },
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "retryable": {"type": "boolean"},
                        "step_id": {"type": "string"},
                        "namespace": {"type": "string"},
                        "backend": {"type": "string"},
                    },
                },
                "ArtifactInfo": {
                    "type": "object",
                    "required": ["step_id", "size", "digest", "media_type", "schema_name", "created_at"],
                    "properties": {
                        "step_id": {"type": "string"},
                        "size": {"type": "integer", "minimum": 0},
                        "digest": {"type": "string", "example": "blake3:af1349b9..."},
                        "media_type": {"type": "string"},
                        "schema_name": {"type": "string", "nullable": True},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Page": {
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/ArtifactInfo"}},
                        "next_cursor": {"type": "string", "nullable": True},
                    },
                },
                "Deleted": {
                    "type": "object",
                    "required": ["deleted"],
                    "properties": {"deleted": {"type": "boolean"}},
                },
                "Cleared": {
                    "type": "object",
                    "required": ["removed"],
                    "properties": {"removed": {"type": "integer", "minimum": 0}},
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "max_body_bytes": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "The largest artifact content (after decompression) a save may "
                            "carry; the request body may hold the envelope's head on top. Clients stop reading a "
                            "stream to save once it is longer.",
                        },
                    },
                },
            },
        },
    }
