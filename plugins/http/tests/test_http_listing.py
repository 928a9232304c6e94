"""Listing through the server: each page reads the infos of that page, not of the whole namespace."""

from __future__ import annotations

import httpx
import pytest

from artifactstore_core import Message
from artifactstore_core.testing import ORDER_TRAP_IDS
from artifactstore_http.testing import TOKEN, ServerThread, client_for
from artifactstore_redis.testing import RedisServer


def _calls(redis: RedisServer, command: str) -> int:
    with redis.client() as probe:
        stats = probe.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.timeout(120)
def test_paging_through_redis_reads_each_artifacts_head_once(
    redis_server: ServerThread, redis_process: RedisServer
) -> None:
    # The server answered each page (1,000 artifacts) by reading the head of every artifact of the
    # namespace and keeping the smallest ids: 3 pages of 2,500 artifacts cost 7,500 HGETs, n * n / 1,000 in
    # all. Now the page's ids are picked from the index's members and only their heads are read.
    count = 2_500
    ids = [f"step-{index:05d}" if index % 3 else f"Step/{index:05d}-é" for index in range(count)]
    with client_for(redis_server.url, "paging") as client:
        client.save_many({step_id: Message(content=b"x") for step_id in ids})
        before = _calls(redis_process, "hget")
        listed = [info.step_id for info in client.list()]
        heads_read = _calls(redis_process, "hget") - before
        assert listed == sorted(ids)
        pages = -(-count // 1_000)
        assert heads_read <= count + pages  # each page reads one more, to tell whether another follows
        client.clear()


@pytest.mark.timeout(60)
def test_pages_follow_step_id_order_not_the_backends_key_order(redis_server: ServerThread) -> None:
    # Redis members are encode_name(id), which sorts "A" ("%41") before "-": pages must still be slices of
    # sorted(step_id), including non-ASCII ids and ids whose encoded forms sort otherwise.
    with client_for(redis_server.url, "order") as client:
        client.save_many({step_id: Message(content=index) for index, step_id in enumerate(ORDER_TRAP_IDS)})
        seen: list[str] = []
        cursor = None
        with httpx.Client(base_url=redis_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as raw:
            while True:
                params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
                page = raw.get("/v1/namespaces/order/artifacts", params=params).json()
                assert len(page["items"]) <= 3
                seen += [item["step_id"] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        assert seen == sorted(ORDER_TRAP_IDS)
        client.clear()


@pytest.mark.timeout(120)
def test_client_list_page_asks_the_server_for_that_page(redis_server: ServerThread, redis_process: RedisServer) -> None:
    # The client's list_page was the core's default: a pass over list(), every page of the namespace.
    count = 1_500
    ids = [f"id-{index:04d}" for index in range(count)]
    with client_for(redis_server.url, "client-page") as client:
        client.save_many({step_id: Message(content=b"x") for step_id in ids})
        before = _calls(redis_process, "hget")
        page = client.list_page(after="id-0700", limit=5)
        heads_read = _calls(redis_process, "hget") - before
        assert [info.step_id for info in page] == ids[701:706]
        assert page == [client.info(step_id) for step_id in ids[701:706]]
        assert heads_read <= 6
        assert [info.step_id for info in client.list_page(after="id-1497", limit=5)] == ids[1498:]
        assert len(client.list_page(limit=1_200)) == 1_200  # more than one request's worth
        client.clear()
