"""Ids on the wire: percent-encoded once, decoded once, never sanitized, never a path."""

from __future__ import annotations

import tracemalloc
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from artifactstore_core import ArtifactNotFoundError, Codec, Message
from artifactstore_core.ids import MAX_ID_BYTES, is_legal
from artifactstore_http.protocol import decode_cursor, encode_cursor, quote_segment
from artifactstore_http.testing import TOKEN, MakeClient, ServerThread
from artifactstore_memory import MemorySpace, MemoryStore

TRAVERSAL_IDS = [
    "../x",
    "../../etc/passwd",
    "..",
    ".",
    "%2e%2e%2fx",
    "%2E%2E%2Fx",
    "%252e",
    "%252e%252e%252fx",
    "%2e",
    "x#fragment",
    "#",
    "x?query=1",
    "?",
    "a\\b",
    "..\\..\\windows",
    "/absolute",
    "a//b",
    "x/",
    "%",
    "%zz",
    "%00",
    "+plus+",
    "~tilde",
    "a;b",
    "a=b&c=d",
]


def test_traversal_ids_round_trip_as_distinct_artifacts(make_client: MakeClient, memory_space: MemorySpace) -> None:
    store = make_client("ids")
    neighbour = make_client("x")
    neighbour.save("x", Message(content="the neighbour's"))
    for index, step_id in enumerate(TRAVERSAL_IDS):
        store.save(step_id, Message(content={"index": index, "id": step_id}))
    for index, step_id in enumerate(TRAVERSAL_IDS):
        assert store.get(step_id).content == {"index": index, "id": step_id}
        assert store.exists(step_id)
    assert sorted(info.step_id for info in store.list()) == sorted(TRAVERSAL_IDS)
    # Behind the server: exactly these ids, in this namespace, and nothing written anywhere else.
    assert sorted(memory_space.namespace("ids")) == sorted(TRAVERSAL_IDS)
    assert list(memory_space.namespace("x")) == ["x"]
    assert neighbour.get("x").content == "the neighbour's"
    assert store.delete("../x") is True
    assert store.get("%2e%2e%2fx").content["id"] == "%2e%2e%2fx"
    assert store.clear() == len(TRAVERSAL_IDS) - 1
    assert list(memory_space.namespace("x")) == ["x"]


def test_traversal_namespaces_stay_apart(make_client: MakeClient, memory_space: MemorySpace) -> None:
    names = ["..", ".", "../ids2", "ids2/..", "%2e%2e", "ids2#", "ids2?x=1", "ids2\\.."]
    for name in names:
        make_client(name).save("same", Message(content=name))
    for name in names:
        assert make_client(name).get("same").content == name
        assert list(memory_space.namespace(name)) == ["same"]
    assert "ids2" not in memory_space.namespace_names()
    for name in names:
        assert make_client(name).clear() == 1


def test_the_server_decodes_exactly_once(memory_server: ServerThread, memory_space: MemorySpace) -> None:
    body = Codec().encode(Message(content=b"once")).to_bytes()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=memory_server.url, headers=auth, timeout=10) as client:
        # %252e is "%2e" on the wire's first decoding, and must stay "%2e" (not become ".").
        assert client.put("/v1/namespaces/once/artifacts/%252e", content=body).status_code == 204
        assert client.put("/v1/namespaces/once/artifacts/a%2Fb", content=body).status_code == 204
        assert client.put("/v1/namespaces/once/artifacts/%2E%2E", content=body).status_code == 204
        # Lower-case hex and unescaped safe characters decode like any percent-encoding.
        assert client.put("/v1/namespaces/once/artifacts/c%2fd~e", content=body).status_code == 204
        assert sorted(memory_space.namespace("once")) == ["%2e", "..", "a/b", "c/d~e"]
        for path in ("/v1/namespaces/once/artifacts/%zz", "/v1/namespaces/once/artifacts/%ff%fe"):
            response = client.get(path)
            assert response.status_code == 400
            assert response.json()["type"] == "InvalidStepIdError"
        response = client.get("/v1/namespaces/once/artifacts/a%00b")
        assert (response.status_code, response.json()["type"]) == (400, "InvalidStepIdError")
        assert client.delete("/v1/namespaces/once").json() == {"removed": 4}


@given(st.text(min_size=1))
def test_quote_segment_is_one_percent_encoding(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return
    encoded = quote_segment(value)
    assert unquote(encoded, errors="strict") == value
    assert not set(encoded) & set("/?#\\. ")
    assert encoded.isascii()


@given(st.text(min_size=1))
def test_cursors_of_step_ids_round_trip(value: str) -> None:
    assume(is_legal(value))
    assert decode_cursor(encode_cursor(value)) == value


@pytest.mark.parametrize(
    "cursor",
    ["", "!!", "YQ", "YQ==x", "%%%", encode_cursor("a\x00"), encode_cursor("a" * (MAX_ID_BYTES + 1))],
)
def test_malformed_cursors_are_refused(cursor: str) -> None:
    # A cursor of text that is no step id (a NUL, too long) was "decoded" and then refused as a bad step id,
    # unlike every other cursor no server made.
    with pytest.raises(ValueError, match="malformed cursor"):
        decode_cursor(cursor)


def test_list_pages_through_every_artifact(make_client: MakeClient, memory_server: ServerThread) -> None:
    store = make_client("pages")
    ids = [f"p{i:03d}" for i in range(25)]
    store.save_many({step_id: Message(content=i) for i, step_id in enumerate(ids)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    seen: list[str] = []
    cursor = None
    with httpx.Client(base_url=memory_server.url, headers=auth, timeout=10) as client:
        while True:
            params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/namespaces/pages/artifacts", params=params).json()
            assert len(page["items"]) <= 10
            seen += [item["step_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        for bad in ({"limit": "0"}, {"limit": "x"}, {"cursor": "!!"}, {"limit": "10001"}):
            response = client.get("/v1/namespaces/pages/artifacts", params=bad)
            assert (response.status_code, response.json()["type"]) == (400, "InvalidRequest")
    assert seen == ids
    assert sorted(info.step_id for info in store.list()) == ids
    store.clear()


@pytest.mark.timeout(120)
def test_a_list_page_holds_one_page_of_infos_not_the_namespace(
    memory_space: MemorySpace, memory_server: ServerThread
) -> None:
    # Each page request used to sort the whole namespace's listing into a list (memory proportional to the
    # namespace, for every page); a page is now picked with a heap of limit + 1 infos. The server runs in
    # this process (a thread), so tracemalloc sees what answering one page allocates.
    count = 20_000
    with MemoryStore(namespace="wide", space=memory_space) as seed:
        seed.save_many({f"w{i:05d}": Message(content=b"") for i in range(count)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=memory_server.url, headers=auth, timeout=60) as client:
        client.get("/v1/namespaces/wide/artifacts", params={"limit": "5"}).raise_for_status()  # warm the store cache
        tracemalloc.start()
        try:
            page = client.get("/v1/namespaces/wide/artifacts", params={"limit": "5"}).json()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [item["step_id"] for item in page["items"]] == [f"w{i:05d}" for i in range(5)]
    # 20,000 infos held at once take several MB; one page of them and the listing's own working set far less.
    assert peak < 2 * 1024 * 1024, f"answering one page of 5 peaked at {peak} bytes"


def test_ids_that_look_like_urls_with_a_password_reach_the_caller_unchanged(
    make_client: MakeClient, memory_server: ServerThread
) -> None:
    # The error text the server sends was redacted with URL passwords masked, which rewrote such ids.
    step_id, namespace = "job://daily:12:30@2024", "team://a:b@c"
    store = make_client(namespace)
    with pytest.raises(ArtifactNotFoundError) as info:
        store.get(step_id)
    assert info.value.step_id == step_id
    assert info.value.namespace == namespace
    assert repr(step_id) in str(info.value)
    assert repr(namespace) in str(info.value)
