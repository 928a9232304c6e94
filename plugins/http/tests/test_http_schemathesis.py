"""schemathesis against the OpenAPI document the server serves: no 5xx, no response outside the schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from artifactstore_core import Codec, Message
from artifactstore_http.protocol import MEDIA_TYPE_ENVELOPE
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread
from artifactstore_memory import MemorySpace, MemoryStore

# Envelopes are opaque bytes to schemathesis, sent as it sends application/octet-stream.
schemathesis.serializer.alias(MEDIA_TYPE_ENVELOPE, "application/octet-stream")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[ServerThread]:
    space = MemorySpace()
    # Some artifacts to find, so reads and listings also take their success paths.
    seed = MemoryStore(namespace="a", space=space)
    for step_id in ("a", "0", "b"):
        seed.save(step_id, Message(content={"seed": step_id}))
    app = create_app(lambda ns: MemoryStore(namespace=ns, space=space), token=SecretStr(TOKEN), max_body_bytes=65536)
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_conforms_to_its_document(fuzzed_server: ServerThread, mode: GenerationMode) -> None:
    # The document is loaded from the running server, as a client would. (schemathesis's lazy pytest
    # integration, from_fixture, does not run under pytest 9.2, hence a plain Hypothesis test.)
    api = schemathesis.openapi.from_url(f"{fuzzed_server.url}/v1/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    operations: set[str] = set()

    @given(case=api.as_strategy(mode))
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        operations.add(f"{case.method} {case.path}")
        case.call_and_validate(base_url=fuzzed_server.url, headers=auth, checks=CHECKS, timeout=30)

    check()
    assert len(operations) >= 7, operations  # every operation of the document was exercised
    assert "GET /v1/namespaces/{namespace}/artifacts/{step_id}/info" in operations, operations


def test_valid_envelopes_are_accepted_by_the_documented_operation(fuzzed_server: ServerThread) -> None:
    # Random bytes are (rightly) rejected with 422; check the success path against the document too.
    import httpx

    body = Codec().encode(Message(content=b"fuzz")).to_bytes()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.put(f"{fuzzed_server.url}/v1/namespaces/z/artifacts/x", content=body, headers=auth, timeout=10)
    assert response.status_code == 204
    document = httpx.get(f"{fuzzed_server.url}/v1/openapi.json", timeout=10).json()
    assert "204" in document["paths"]["/v1/namespaces/{namespace}/artifacts/{step_id}"]["put"]["responses"]
