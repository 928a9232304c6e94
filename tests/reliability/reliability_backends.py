"""Every first-party backend as the reliability suite sees it: how to build a store, directly or through
a fault proxy, how to rebuild it in another process, and how to write and read raw bytes in its storage.

Adding a backend is one entry: a function that returns a :class:`Backend`, listed in :data:`BUILDERS`
(and its server fixture in ``conftest.py``). Every server runs with the canary secrets below for the
whole session, so every test of the suite doubles as a secrets test (see ``test_rel_secrets.py``).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from faultproxy import FaultProxy
from pydantic import SecretStr

from artifactstore_core import ArtifactStore, Codec
from artifactstore_core.envelope import PREFIX_SIZE
from artifactstore_core.ids import encode_name
from artifactstore_core.pipeline import StoreConfig
from artifactstore_core.testing_servers import wait_for

# -- canary secrets: set for the whole session; none may ever appear in a log record, repr or error --

REDIS_PASSWORD = "redis-canary-pw-7c1f0e3a"
HTTP_TOKEN = "http-canary-token-5b2d9a7e11"
S3_ACCESS_KEY = "AKIACANARY0D8E4F61XY"
S3_SECRET_KEY = "s3-canary-secret-0d8e4f61"
SIGNING_KEY = "signing-canary-key-91ab22"
URL_PASSWORD = "url-canary-pw-4e19"

#: Every canary, with the spellings a leak could take (percent-encoded in a URL, base64 in a header).
CANARIES: tuple[str, ...] = tuple(
    sorted(
        {
            form
            for secret in (REDIS_PASSWORD, HTTP_TOKEN, S3_SECRET_KEY, SIGNING_KEY, URL_PASSWORD)
            for form in (secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode().rstrip("="))
        }
    )
)
#: The S3 access key id is a SecretStr in the settings, but AWS treats it as an identifier; botocore
#: itself logs it (in the signed Authorization header) at DEBUG. Checked in our own output only.
IDENTIFIERS: tuple[str, ...] = (S3_ACCESS_KEY,)

REGION = "us-east-1"


def leaked(text: str, secrets: tuple[str, ...] = CANARIES) -> list[str]:
    """The canaries that appear in ``text``."""
    return [secret for secret in secrets if secret in text]


class CanaryHandler(logging.Handler):
    """Formats every record (message, arguments, traceback) and keeps those that show a canary."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records = 0
        self.leaks: list[str] = []
        self._lock_leaks = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + repr(record.args) + (record.exc_text or "")
        except Exception as exc:  # a record that cannot even be formatted is reported, not hidden
            text = f"unformattable record {record.name}: {exc!r}"
        self.records += 1
        found = leaked(text)
        if record.name.startswith("artifactstore"):
            found += leaked(text, IDENTIFIERS)
        if found:
            with self._lock_leaks:
                self.leaks.append(f"{record.name}:{record.levelname}: {found} in {text[:500]!r}")


# -- the backends -------------------------------------------------------------------------------------

Plant = Callable[[str, str, bytes, bytes], None]
Fetch = Callable[[str, str], tuple[bytes, bytes]]


@dataclass
class Backend:
    """One backend under test.

    Attributes:
        name: the backend name.
        make: a new store on ``namespace`` (direct connection, default timeouts).
        config: a :class:`StoreConfig` that rebuilds the same backend in another process (``None``: the
            backend is not shared across processes).
        plant: write raw ``(head, payload)`` bytes as the stored form of an artifact, bypassing the store
            (``None`` for memory, which stores objects).
        fetch: read the raw ``(head, payload)`` stored for ``(namespace, step_id)``, bypassing the store
            (``None`` for memory).
        upstream_port: the TCP port of its server, for a fault proxy to stand in front of.
        through: a new store on ``namespace`` that connects through ``proxy``, with short timeouts.
        deadline: the longest any single call may take through a faulty proxy with those timeouts
            (attempts x timeouts + backoff, rounded up): longer is a hang.
    """

    name: str
    make: Callable[[str], ArtifactStore]
    config: StoreConfig | None = None
    plant: Plant | None = None
    fetch: Fetch | None = None
    upstream_port: int | None = None
    through: Callable[[FaultProxy, str], ArtifactStore] | None = None
    deadline: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"


def memory_backend() -> Backend:
    from artifactstore_memory import MemorySpace, MemoryStore

    space = MemorySpace()
    return Backend("memory", lambda ns: MemoryStore(namespace=ns, space=space), extra={"space": space})


def _fs_path(root: Path, namespace: str, step_id: str) -> Path:
    from artifactstore_filesystem.layout import encode_components

    return root.joinpath(*encode_components(namespace), *encode_components(step_id))


def _fs_fetch(root: Path) -> Fetch:
    def fetch(namespace: str, step_id: str) -> tuple[bytes, bytes]:
        # One file: the head, whose length its prefix gives, then the payload.
        data = _fs_path(root, namespace, step_id).read_bytes()
        size = Codec.head_size(data[:PREFIX_SIZE])
        return data[:size], data[size:]

    return fetch


def _fs_plant(root: Path) -> Plant:
    def plant(namespace: str, step_id: str, head: bytes, payload: bytes) -> None:
        path = _fs_path(root, namespace, step_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = head + payload
        # Rewriting in place is much faster than truncating on some file systems (bit-flip tests plant
        # thousands of times), and a same-size rewrite is what a disk error looks like anyway.
        try:
            with path.open("r+b") as file:
                file.write(data)
                file.truncate(len(data))
        except FileNotFoundError:
            path.write_bytes(data)

    return plant


def filesystem_backend(root: Path) -> Backend:
    from artifactstore_filesystem import FilesystemSettings, FilesystemStore

    settings = FilesystemSettings(root=root)
    return Backend(
        "filesystem",
        lambda ns: FilesystemStore(settings, namespace=ns),
        config=StoreConfig("filesystem", root=str(root)),
        plant=_fs_plant(root),
        fetch=_fs_fetch(root),
        extra={"root": root},
    )


def redis_url(port: int, password: str = REDIS_PASSWORD) -> str:
    """A Redis URL that carries the canary password as user info (``default`` is Redis's own user)."""
    return f"redis://default:{quote(password, safe='')}@127.0.0.1:{port}/0"


def redis_backend(port: int) -> Backend:
    import redis as redis_py

    from artifactstore_redis import RedisSettings, RedisStore

    def make(namespace: str) -> ArtifactStore:
        return RedisStore(RedisSettings(url=SecretStr(redis_url(port))), namespace=namespace)

    def through(proxy: FaultProxy, namespace: str) -> ArtifactStore:
        settings = RedisSettings(
            url=SecretStr(redis_url(proxy.port)),
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry_attempts=2,
            pool_timeout=2,
            health_check_interval=0,
        )
        return RedisStore(settings, namespace=namespace)

    raw = redis_py.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=10)

    def plant(namespace: str, step_id: str, head: bytes, payload: bytes) -> None:
        # The documented layout (artifactstore_redis.store): {prefix:ns}:a:<id> hash, {prefix:ns}:idx zset.
        tag = f"{{artifactstore:{encode_name(namespace)}}}"
        member = encode_name(step_id)
        raw.hset(f"{tag}:a:{member}", mapping={"head": head, "payload": payload, "id": b"planted"})
        raw.zadd(f"{tag}:idx", {member: float("inf")})

    def fetch(namespace: str, step_id: str) -> tuple[bytes, bytes]:
        # A small payload is inline in the hash; a large one is in its own key, {prefix:ns}:p:<id>.
        tag = f"{{artifactstore:{encode_name(namespace)}}}"
        member = encode_name(step_id)
        head, payload = raw.hmget(f"{tag}:a:{member}", ["head", "payload"])
        if payload is None:
            payload = raw.get(f"{tag}:p:{member}")
        assert head is not None, f"{step_id!r} is not stored in {namespace!r}"
        assert payload is not None, f"{step_id!r} has no payload in {namespace!r}"
        return head, payload

    return Backend(
        "redis",
        make,
        config=StoreConfig("redis", url=redis_url(port)),
        plant=plant,
        fetch=fetch,
        upstream_port=port,
        through=through,
        # 3 attempts x (0.5 connect + 0.5 reply) + backoff, per command; a save is two commands.
        deadline=8.0,
        extra={"raw": raw},
    )


def http_backend(url: str, port: int, root: Path) -> Backend:
    from artifactstore_http import HttpSettings, HttpStore

    def make(namespace: str) -> ArtifactStore:
        return HttpStore(HttpSettings(endpoint=url, token=SecretStr(HTTP_TOKEN)), namespace=namespace)

    def through(proxy: FaultProxy, namespace: str) -> ArtifactStore:
        settings = HttpSettings(
            endpoint=f"http://{proxy.address}",
            token=SecretStr(HTTP_TOKEN),
            connect_timeout=0.5,
            read_timeout=0.5,
            retries=2,
        )
        return HttpStore(settings, namespace=namespace)

    return Backend(
        "http",
        make,
        config=StoreConfig("http", endpoint=url, token=HTTP_TOKEN),
        # The server stores on the filesystem backend: planting there is planting in the server's storage.
        plant=_fs_plant(root),
        fetch=_fs_fetch(root),
        upstream_port=port,
        through=through,
        # 3 attempts x (0.5 connect + 0.5 per read) + up to 0.6 s backoff.
        deadline=8.0,
    )


def s3_backend(endpoint: str, port: int, bucket: str) -> Backend:
    import boto3

    from artifactstore_s3 import S3Settings, S3Store
    from artifactstore_s3.keys import KeyLayout
    from artifactstore_s3.layout import HEAD_META, stored_head

    base: dict[str, Any] = {
        "bucket": bucket,
        "region": REGION,
        "access_key_id": S3_ACCESS_KEY,
        "secret_access_key": S3_SECRET_KEY,
    }

    def make(namespace: str) -> ArtifactStore:
        return S3Store(S3Settings(endpoint_url=endpoint, **base), namespace=namespace)

    def through(proxy: FaultProxy, namespace: str) -> ArtifactStore:
        settings = S3Settings(
            endpoint_url=f"http://{proxy.address}", connect_timeout=0.5, read_timeout=0.5, max_attempts=2, **base
        )
        return S3Store(settings, namespace=namespace)

    raw = boto3.session.Session(
        aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY, region_name=REGION
    ).client("s3", endpoint_url=endpoint)

    def plant(namespace: str, step_id: str, head: bytes, payload: bytes) -> None:
        key = KeyLayout("artifactstore", namespace).key(step_id)
        metadata = {HEAD_META: base64.b64encode(head).decode("ascii")} if head else {}
        raw.put_object(Bucket=bucket, Key=key, Body=payload, Metadata=metadata)

    def fetch(namespace: str, step_id: str) -> tuple[bytes, bytes]:
        # The head is in the object's metadata, or (too large for metadata) at the start of its body.
        key = KeyLayout("artifactstore", namespace).key(step_id)
        response = raw.get_object(Bucket=bucket, Key=key)
        body = response["Body"].read()
        found = stored_head(response.get("Metadata", {}), key)
        if found.head is not None:
            return found.head, body
        return body[: found.size], body[found.size :]

    return Backend(
        "s3",
        make,
        config=StoreConfig("s3", endpoint_url=endpoint, **base),
        plant=plant,
        fetch=fetch,
        upstream_port=port,
        through=through,
        # 2 attempts x (0.5 connect + 0.5 read) + botocore's backoff (at most 1 s) per request; the first
        # write of a store also runs the conditional-write probe (three requests).
        deadline=12.0,
        extra={"raw": raw, "bucket": bucket},
    )


#: Every backend the suite covers, in order; the conftest's ``backend`` fixture is parametrized by it.
NAMES: tuple[str, ...] = ("memory", "filesystem", "redis", "http", "s3")
#: Backends with a server a fault proxy can stand in front of.
NETWORK: tuple[str, ...] = ("redis", "http", "s3")
#: Backends shared across processes.
CROSS_PROCESS: tuple[str, ...] = ("filesystem", "redis", "http", "s3")
#: Backends that store envelope bytes (everything but memory).
BYTE_STORING: tuple[str, ...] = ("filesystem", "redis", "http", "s3")


# -- servers --------------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail (AssertionError) after ``timeout`` seconds."""
    wait_for(condition, what, timeout, error=AssertionError)
