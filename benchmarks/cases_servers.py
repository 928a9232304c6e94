"""Cases against real servers: each backend beside its raw client on the same server and settings."""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import cast

import blake3
import httpx
import redis
from pydantic import SecretStr

from artifactstore_core import Message
from artifactstore_filesystem import FilesystemSettings, FilesystemStore
from artifactstore_http import HttpSettings, HttpStore
from artifactstore_http.server import create_app
from artifactstore_http.testing import TOKEN, ServerThread
from artifactstore_memory import MemorySpace, MemoryStore
from artifactstore_redis import RedisSettings, RedisStore
from artifactstore_redis.testing import RedisServer

from .cases_core import SMALL
from .harness import Case, smoke

MB = 1024 * 1024
# Artifacts a clear() case removes; a smoke run (python -m benchmarks --smoke) only proves the case works.
CLEAR_COUNT = 100 if smoke() else 10_000
ONE_MB = Message(content=os.urandom(MB))
SIXTY_FOUR_MB = Message(content=os.urandom(64 * MB))
# The store hashes payloads below 2 MiB on one thread (more threads cost more than they save there).
ONE_DIGEST = "+ one BLAKE3 pass over the payload (one thread, as the store at this size)"


def digest(data: bytes) -> bytes:
    """One BLAKE3 pass over ``data``, threaded as the store threads it (from 2 MiB)."""
    threads = blake3.blake3.AUTO if len(data) >= 2 * MB else 1
    return blake3.blake3(data, max_threads=threads).digest()


def redis_cases(stack: ExitStack) -> list[Case]:
    """The redis backend beside redis-py SET/GET/EXISTS and pipelines on the same server."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-")))
    server = RedisServer(workdir).start()
    stack.callback(server.stop)
    store = RedisStore(RedisSettings(url=SecretStr(server.url)), namespace="bench")
    stack.callback(store.close)
    raw = redis.Redis.from_url(server.url)
    stack.callback(raw.close)
    small_bytes = store.codec.encode(SMALL).to_bytes()
    cases: list[Case] = []

    def reset() -> None:
        store.clear()
        raw.delete(*raw.keys("raw:*") or [b"raw:none"])

    def save_case(name: str, message: Message, number: int, target: float | None, floor: bool = False) -> Case:
        blob = message.content if isinstance(message.content, bytes) else small_bytes

        def floor_save(i: int) -> None:
            digest(blob)
            raw.set(f"raw:f{i}", blob)

        return Case(
            "redis",
            f"{name} save",
            lambda i: store.save(f"s{i}", message),
            lambda i: raw.set(f"raw:s{i}", blob),
            number=number,
            target=target,
            reset=reset,
            floor=floor_save if floor else None,
            floor_note=f"raw SET {ONE_DIGEST}" if floor else "",
        )

    def get_case(name: str, message: Message, number: int, target: float | None, floor: bool = False) -> Case:
        blob = message.content if isinstance(message.content, bytes) else small_bytes

        def prepare() -> None:
            store.save("g", message)
            raw.set("raw:g", blob)

        def floor_get(i: int) -> None:
            digest(cast(bytes, raw.get("raw:g")))

        return Case(
            "redis", f"{name} get", lambda i: store.get("g"), lambda i: raw.get("raw:g"),
            number=number, target=target, prepare=prepare,
            floor=floor_get if floor else None, floor_note=f"raw GET {ONE_DIGEST}" if floor else "",
        )  # fmt: skip

    cases += [
        save_case("small 1 KB", SMALL, 500, 1.5),
        get_case("small 1 KB", SMALL, 500, None),
        save_case("1 MB", ONE_MB, 50, 1.2, floor=True),
        get_case("1 MB", ONE_MB, 50, 1.2, floor=True),
        save_case("64 MB", SIXTY_FOUR_MB, 2, 1.2, floor=True),
        get_case("64 MB", SIXTY_FOUR_MB, 2, 1.2, floor=True),
        Case("redis", "exists", lambda i: store.exists("g"), lambda i: raw.exists("raw:g"), number=500),
    ]

    batch = {f"b{i}": SMALL for i in range(1000)}

    def raw_set_many(i: int) -> None:
        pipe = raw.pipeline(transaction=False)
        for key in batch:
            pipe.set(f"raw:{key}", small_bytes)
        pipe.execute()

    def raw_get_many(i: int) -> list[bytes]:
        pipe = raw.pipeline(transaction=False)
        for key in batch:
            pipe.get(f"raw:{key}")
        return pipe.execute()

    # Where the JSON content starts in the stored bytes (the envelope ends with its payload).
    content_at = len(small_bytes) - len(store.codec.encode(SMALL).payload)

    def floor_get_many(i: int) -> None:
        for value in raw_get_many(i):
            digest(value)
            json.loads(value[content_at:])

    def fill_both() -> None:
        store.save_many(batch)
        raw_set_many(0)

    cases += [
        Case(
            "redis", "save_many 1,000 small", lambda i: store.save_many(batch), raw_set_many,
            number=3, reset=reset,
        ),
        Case(
            "redis", "get_many 1,000 small", lambda i: store.get_many(list(batch)), raw_get_many,
            number=3, target=1.3, prepare=fill_both, floor=floor_get_many,
            floor_note="raw pipelined GET + per artifact one BLAKE3 pass and json.loads of its content",
        ),
    ]  # fmt: skip

    many = {f"c{i}": SMALL for i in range(CLEAR_COUNT)}

    def raw_clear(i: int) -> None:
        keys = raw.keys("raw:c*")
        for start in range(0, len(keys), 500):
            raw.delete(*keys[start : start + 500])

    def raw_fill(i: int) -> None:
        pipe = raw.pipeline(transaction=False)
        for key in many:
            pipe.set(f"raw:{key}", small_bytes)
        pipe.execute()

    cases.append(
        Case(
            "redis", f"clear {CLEAR_COUNT:,}", lambda i: store.clear(), raw_clear, number=1, repeat=5,
            before_ours=lambda i: store.save_many(many), before_raw=raw_fill,
        )
    )  # fmt: skip
    return cases


def http_cases(stack: ExitStack) -> list[Case]:
    """The http backend beside raw httpx PUT/GET of the same envelope bytes against the same uvicorn."""
    space = MemorySpace()
    app = create_app(lambda namespace: MemoryStore(namespace=namespace, space=space), token=SecretStr(TOKEN))
    server = ServerThread(app).start()
    stack.callback(server.stop)
    store = HttpStore(HttpSettings(endpoint=server.url, token=SecretStr(TOKEN)), namespace="bench")
    stack.callback(store.close)
    raw = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    stack.callback(raw.close)

    def blob(message: Message) -> bytes:
        return store.codec.encode(message).to_bytes()

    def reset() -> None:
        store.clear()
        raw.delete("/v1/namespaces/raw")

    cases = []
    for name, message, number in (("small 1 KB", SMALL, 300), ("1 MB", ONE_MB, 30)):
        body = blob(message)
        cases.append(
            Case(
                "http", f"{name} save",
                lambda i, m=message: store.save(f"s{i}", m),
                lambda i, b=body: raw.put(f"/v1/namespaces/raw/artifacts/s{i}", content=b).raise_for_status(),
                number=number, reset=reset,
            )
        )  # fmt: skip

        def prepare(m: Message = message, b: bytes = body) -> None:
            store.save("g", m)
            raw.put("/v1/namespaces/raw/artifacts/g", content=b).raise_for_status()

        cases.append(
            Case(
                "http", f"{name} get", lambda i: store.get("g"),
                lambda i: raw.get("/v1/namespaces/raw/artifacts/g").raise_for_status(),
                number=number, prepare=prepare,
            )
        )  # fmt: skip
    return cases


def filesystem_cases(stack: ExitStack) -> list[Case]:
    """The filesystem backend beside a plain durable write (temp file, fsync, rename) and a plain read."""
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fs-")))
    store = FilesystemStore(FilesystemSettings(root=root / "store"), namespace="bench")
    stack.callback(store.close)
    raw_dir = root / "raw"
    raw_dir.mkdir()

    def raw_write(name: str, data: bytes) -> None:
        tmp = raw_dir / f".{name}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, raw_dir / name)
        fd = os.open(raw_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def reset() -> None:
        store.clear()
        for path in raw_dir.iterdir():
            path.unlink()

    cases = []
    for name, message, number in (("small 1 KB", SMALL, 100), ("1 MB", ONE_MB, 30), ("64 MB", SIXTY_FOUR_MB, 2)):
        data = message.content if isinstance(message.content, bytes) else store.codec.encode(message).to_bytes()
        cases.append(
            Case(
                "filesystem", f"{name} save",
                lambda i, m=message: store.save(f"s{i}", m),
                lambda i, d=data: raw_write(f"s{i}", d),
                number=number, reset=reset,
            )
        )  # fmt: skip

        def prepare(m: Message = message, d: bytes = data) -> None:
            store.save("g", m, overwrite=True)
            raw_write("g", d)

        cases.append(
            Case(
                "filesystem", f"{name} get", lambda i: store.get("g"), lambda i: (raw_dir / "g").read_bytes(),
                number=number, prepare=prepare,
            )
        )  # fmt: skip
    return cases


def moto(stack: ExitStack) -> tuple[str, dict[str, str]]:
    """A moto S3 server in a process of its own (see :class:`~artifactstore_s3.testing.MotoServer`), with a
    bucket; its endpoint and the s3 store's options."""
    from artifactstore_s3.testing import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer

    server = stack.enter_context(MotoServer())
    options = {
        "bucket": server.create_bucket("bench"),
        "region": REGION,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
    }
    return server.endpoint_url, options


def s3_cases(stack: ExitStack) -> list[Case]:
    """The s3 backend beside raw boto3 put_object/get_object and list+delete_objects on the same moto server."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    from artifactstore_s3 import S3Settings, S3Store

    endpoint, options = moto(stack)
    bucket = options["bucket"]
    raw = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=options["region"],
        aws_access_key_id=options["access_key_id"],
        aws_secret_access_key=options["secret_access_key"],
    )
    settings = S3Settings(endpoint_url=endpoint, **options)  # type: ignore[arg-type]
    store = S3Store(settings, namespace="bench")
    stack.callback(store.close)

    def raw_clear(prefix: str) -> None:
        paginator = raw.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                raw.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

    def reset() -> None:
        store.clear()
        raw_clear("raw/")

    # The same 64 MB in one PUT, as the raw client sends it: separates multipart's cost (on moto, parts are
    # assembled slowly) from ours.
    single = S3Store(
        S3Settings(endpoint_url=endpoint, multipart_threshold=128 * MB, **options),  # type: ignore[arg-type]
        namespace="bench-single",
    )
    stack.callback(single.close)

    def reset_single() -> None:
        single.clear()
        raw_clear("raw/")

    cases = [
        Case(
            "s3", "64 MB save, one PUT",
            lambda i: single.save(f"s{i}", SIXTY_FOUR_MB),
            lambda i: raw.put_object(Bucket=bucket, Key=f"raw/s{i}", Body=SIXTY_FOUR_MB.content),
            number=2, repeat=5, reset=reset_single,
        )
    ]  # fmt: skip
    # boto3's own managed upload, with the store's multipart settings: what the raw client does with a
    # payload this large when asked to upload it the way the store must (in parts, from the threshold).
    transfer = TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.part_size,
        max_concurrency=settings.max_concurrency,
    )

    def floor_save(i: int, d: bytes) -> None:
        digest(d)
        if len(d) >= transfer.multipart_threshold:
            raw.upload_fileobj(io.BytesIO(d), bucket, f"raw/f{i}", Config=transfer)
        else:
            raw.put_object(Bucket=bucket, Key=f"raw/f{i}", Body=d)

    for name, message, number in (("1 MB", ONE_MB, 20), ("64 MB", SIXTY_FOUR_MB, 2)):
        data = message.content
        assert isinstance(data, bytes)
        multipart = len(data) >= transfer.multipart_threshold
        cases.append(
            Case(
                "s3", f"{name} save",
                lambda i, m=message: store.save(f"s{i}", m),
                lambda i, d=data: raw.put_object(Bucket=bucket, Key=f"raw/s{i}", Body=d),
                number=number, repeat=5, target=1.2, reset=reset,
                floor=lambda i, d=data: floor_save(i, d),
                floor_note=(
                    "boto3 upload_fileobj in parts (the store's threshold, part size and concurrency) "
                    "+ one BLAKE3 pass"
                    if multipart
                    else f"raw put_object {ONE_DIGEST}"
                ),
            )
        )  # fmt: skip

        def prepare(m: Message = message, d: bytes = data) -> None:
            store.save("g", m, overwrite=True)
            raw.put_object(Bucket=bucket, Key="raw/g", Body=d)

        cases.append(
            Case(
                "s3", f"{name} get", lambda i: store.get("g"),
                lambda i: raw.get_object(Bucket=bucket, Key="raw/g")["Body"].read(),
                number=number, repeat=5, target=1.2, prepare=prepare,
                floor=lambda i: digest(raw.get_object(Bucket=bucket, Key="raw/g")["Body"].read()),
                floor_note=f"raw get_object {ONE_DIGEST}" if not multipart else "raw get_object + one BLAKE3 pass",
            )
        )  # fmt: skip

    many = {f"c{i}": SMALL for i in range(CLEAR_COUNT)}
    small_body = store.codec.encode(SMALL).to_bytes()

    def raw_fill(i: int) -> None:
        for key in many:
            raw.put_object(Bucket=bucket, Key=f"raw/{key}", Body=small_body)

    cases.append(
        Case(
            "s3", f"clear {CLEAR_COUNT:,}", lambda i: store.clear(), lambda i: raw_clear("raw/"),
            number=1, repeat=3, target=1.2,
            before_ours=lambda i: store.save_many(many), before_raw=raw_fill,
        )
    )  # fmt: skip
    return cases
