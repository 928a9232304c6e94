"""The conformance kit fails backends that are broken in the ways third-party backends get broken.

Each store here is the example backend (tests/example_backend) with one realistic bug; the kit's test for
that part of the contract must fail on it (the real example backend passes the whole kit, in
test_example_backend.py). A kit that passes a broken backend certifies it to its users.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NoReturn

import pytest
from hypothesis import settings

from artifactstore_core import (
    AccessDeniedError,
    ArtifactInfo,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    BackendError,
    BackendUnavailableError,
    Capabilities,
    Codec,
    ConfigurationError,
    Message,
    UnsupportedOperationError,
)
from artifactstore_core.ids import encode_name
from artifactstore_core.store import ContextThreadPoolExecutor
from artifactstore_core.testing import StoreConformance
from artifactstore_core.testing_servers import LOOPBACK, free_port
from artifactstore_core.testing_skips import CAPABILITY_SKIP
from artifactstore_example import _LOCK, _SHELF, ExampleStore

# What a failing kit test raises: an assert, or pytest.raises/pytest.fail (an OutcomeException).
KIT_FAILURES = (AssertionError, pytest.fail.Exception)


class DerandomizedKit(StoreConformance):
    """The kit with its state machine run on the same calls every time: whether it finds a broken store's
    bug must not depend on the draw (a soft delete was missed by 2 of 40 random runs, 1 of 200 once the
    machine deleted saved ids on purpose), or these tests fail now and then."""

    state_machine_settings = settings(StoreConformance.state_machine_settings, derandomize=True, database=None)


class CachingStore(ExampleStore):
    """Remembers what it read: stale after another store of the namespace overwrites or deletes."""

    def __init__(self, *, namespace: str = "default", codec: Codec | None = None) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._cache: dict[str, Message] = {}

    def _get(self, step_id: str) -> Message:
        if step_id not in self._cache:
            self._cache[step_id] = super()._get(step_id)
        return self._cache[step_id]

    def _delete(self, step_id: str) -> bool:
        self._cache.pop(step_id, None)
        return super()._delete(step_id)


class PatternClearStore(ExampleStore):
    """Clears every namespace its own name matches as a case-insensitive glob (a SCAN MATCH or LIKE clear)."""

    def _clear(self) -> int:
        count = 0
        with _LOCK:
            for namespace, blobs in _SHELF.items():
                if fnmatch.fnmatchcase(namespace.lower(), self.namespace.lower()):
                    count += len(blobs)
                    blobs.clear()
        return count


class OnePageStore(ExampleStore):
    """Lists only the first page of 1,000, as a listing that forgets the continuation token does."""

    def _list(self) -> Iterable[ArtifactInfo]:
        return sorted(super()._list(), key=lambda info: info.step_id)[:1000]


class UnverifiedStore(ExampleStore):
    """Rebuilds messages from the stored payload without checking it against the header's digest."""

    def _get(self, step_id: str) -> Message:
        blob = self._blobs.get(step_id)
        if blob is None:
            raise self._not_found(step_id)
        place = (self.namespace, step_id)
        header = self.codec.header_of(blob, place=place)
        payload = blob[len(blob) - header.stored_size :]
        content = (
            payload if header.codec == "bytes" else json.loads(payload) if header.codec == "json" else payload.decode()
        )
        return Codec.message_from(header, content)


class StoredSizeStore(ExampleStore):
    """Reports the size of its stored payload, as a backend that lists its objects' lengths does: right for
    every small artifact, wrong for JSON and text the codec compressed."""

    def _list(self) -> Iterable[ArtifactInfo]:
        with _LOCK:
            snapshot = list(self._blobs.items())
        for step_id, blob in snapshot:
            header = self.codec.header_of(blob, place=(self.namespace, step_id))
            yield dataclasses.replace(header.info(step_id), size=header.stored_size)


class UnplacedStore(ExampleStore):
    """Encodes and decodes without ``place=``: with a signing key, a copy under another id is accepted."""

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        encoded = self.codec.encode(message)
        with _LOCK:
            existing = self._blobs.get(step_id)
            if existing is not None and not overwrite:
                if self.codec.header_of(existing).identity() == encoded.header.identity():
                    return
                raise self._exists_error(step_id)
            self._blobs[step_id] = encoded.to_bytes()

    def _get(self, step_id: str) -> Message:
        blob = self._blobs.get(step_id)
        if blob is None:
            raise self._not_found(step_id)
        return self.codec.decode_bytes(blob)

    def _list(self) -> Iterable[ArtifactInfo]:
        with _LOCK:
            snapshot = list(self._blobs.items())
        return [self.codec.header_of(blob).info(step_id) for step_id, blob in snapshot]


class UnplacedUnverifiedStore(UnplacedStore, UnverifiedStore):
    """UnverifiedStore's reads, and UnplacedStore's writes: no place, so the kit once took it for a store
    of messages (like memory) and did not check its reads at all."""

    _get = UnverifiedStore._get


class NamelessStore(ExampleStore):
    """Forgot backend_name: its errors name backend 'unknown'."""

    backend_name = ArtifactStore.backend_name


class OverclaimingStore(ExampleStore):
    """Registered (as 'example') with other capabilities than the store declares."""

    capabilities = Capabilities(cross_process=True, persistent=True)


class UnreachableStore(ExampleStore):
    """An example store whose storage fails every access, as an unreachable server does."""

    def __init__(self, *, namespace: str = "default", codec: Codec | None = None) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._blobs = _Unreachable()


class _Unreachable(dict[str, bytes]):
    def _fail(self, *args: object) -> NoReturn:
        raise ConnectionRefusedError(111, "Connection refused")

    get = __contains__ = __getitem__ = __setitem__ = pop = items = clear = __len__ = _fail  # type: ignore[assignment]


class ConnectingStore(ExampleStore):
    """Connects to its server when built, as a client that checks its connection at construction does, and
    refuses to be built when it cannot: with ``BackendUnavailableError``, or with ``refusal`` (a bug)."""

    def __init__(
        self,
        port: int,
        *,
        namespace: str = "default",
        codec: Codec | None = None,
        refusal: Callable[[OSError], Exception] | None = None,
    ) -> None:
        try:
            socket.create_connection((LOOPBACK, port), timeout=5).close()
        except OSError as exc:
            if refusal is not None:
                raise refusal(exc) from exc
            raise BackendUnavailableError(
                f"example backend at {LOOPBACK}:{port} refused the connection: {exc.strerror}"
            ) from exc
        super().__init__(namespace=namespace, codec=codec)


class AbsentOnFailureStore(UnreachableStore):
    """Reports a failure to ask as "not there": the bug the contract forbids most loudly."""

    def _exists(self, step_id: str) -> bool:
        try:
            return super()._exists(step_id)
        except OSError:
            return False


class OverdeclaringStore(ExampleStore):
    """Declares list_namespaces (and registers as its own backend) without implementing _namespaces."""

    backend_name = "overdeclaring"
    capabilities = Capabilities(list_namespaces=True)


class NamespacesStore(ExampleStore):
    """The example backend with list_namespaces done right: the namespaces whose shelves hold an artifact."""

    capabilities = Capabilities(list_namespaces=True)

    def _namespaces(self) -> Iterable[str]:
        with _LOCK:
            return [namespace for namespace, blobs in _SHELF.items() if blobs]


# The namespaces RegistryNamespacesStore has saved into: a set beside the shelf, like a Redis set or a table.
_REGISTRY: set[str] = set()


class RegistryNamespacesStore(NamespacesStore):
    """Lists namespaces from a registry that saves add to and only clear() prunes: a namespace whose
    artifacts were all deleted one by one stays listed for ever."""

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        super()._save(step_id, message, overwrite, ttl)
        with _LOCK:
            _REGISTRY.add(self.namespace)

    def _clear(self) -> int:
        with _LOCK:
            _REGISTRY.discard(self.namespace)
        return super()._clear()

    def _namespaces(self) -> Iterable[str]:
        with _LOCK:
            return sorted(_REGISTRY)


class PooledGetManyStore(ExampleStore):
    """Reads a batch on a thread pool whose workers run in their own context, not the caller's."""

    def _get_many(self, step_ids: list[str]) -> dict[str, Message]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(zip(step_ids, pool.map(self._get, step_ids), strict=True))


class PooledSaveManyStore(ExampleStore):
    """Encodes a batch on a thread pool whose workers run in their own context, not the caller's."""

    def _save_many(self, items: list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(self._save, step_id, message, overwrite, ttl) for step_id, message in items]:
                future.result()


class ContextPooledStore(ExampleStore):
    """PooledGetManyStore and PooledSaveManyStore made right: their pools are ContextThreadPoolExecutors."""

    def _get_many(self, step_ids: list[str]) -> dict[str, Message]:
        with ContextThreadPoolExecutor(max_workers=4) as pool:
            return dict(zip(step_ids, pool.map(self._get, step_ids), strict=True))

    def _save_many(self, items: list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        with ContextThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(self._save, step_id, message, overwrite, ttl) for step_id, message in items]:
                future.result()


class StorageOrderPageStore(ExampleStore):
    """Pages in the order of its storage names (``encode_name``), as a backend that pages with a sorted
    key range (S3's ``StartAfter``) would: "%41" (for "A") sorts before "-", unlike the ids."""

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        infos = sorted(self._list(), key=lambda info: encode_name(info.step_id))
        if after is not None:
            infos = [info for info in infos if encode_name(info.step_id) > encode_name(after)]
        return infos[:limit]


# namespace -> step id -> time.monotonic() deadline, for TtlStore: beside the example's shelf, like a column.
_DEADLINES: dict[str, dict[str, float]] = {}


class TtlStore(ExampleStore):
    """The example backend with native TTL done right: a save sets the artifact's expiry (or, without a ttl,
    removes the one it replaces), and every read leaves out what has expired. Expired artifacts stay on the
    shelf until they are saved over, deleted or cleared, as rows with an expiry column stay in a table."""

    capabilities = Capabilities(native_ttl=True)

    def _expired(self, step_id: str) -> bool:
        deadline = _DEADLINES.get(self.namespace, {}).get(step_id)
        return deadline is not None and deadline <= time.monotonic()

    def _drop_if_expired(self, step_id: str) -> None:
        with _LOCK:
            if self._expired(step_id):
                self._blobs.pop(step_id, None)
                _DEADLINES[self.namespace].pop(step_id, None)

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        self._drop_if_expired(step_id)
        super()._save(step_id, message, overwrite, ttl)
        self._set_expiry(step_id, ttl)

    def _set_expiry(self, step_id: str, ttl: float | None) -> None:
        with _LOCK:
            deadlines = _DEADLINES.setdefault(self.namespace, {})
            if ttl is None:
                deadlines.pop(step_id, None)
            else:
                deadlines[step_id] = time.monotonic() + ttl

    def _get(self, step_id: str) -> Message:
        if self._expired(step_id):
            raise self._not_found(step_id)
        return super()._get(step_id)

    def _exists(self, step_id: str) -> bool:
        return not self._expired(step_id) and super()._exists(step_id)

    def _delete(self, step_id: str) -> bool:
        self._drop_if_expired(step_id)
        return super()._delete(step_id)

    def _list(self) -> Iterable[ArtifactInfo]:
        return [info for info in super()._list() if not self._expired(info.step_id)]

    def _clear(self) -> int:
        with _LOCK:
            for step_id in [step_id for step_id in self._blobs if self._expired(step_id)]:
                del self._blobs[step_id]
            _DEADLINES.pop(self.namespace, None)
        return super()._clear()


class BatchWithoutTtlStore(TtlStore):
    """Its batch path forgets the ttl: artifacts saved with save_many never expire."""

    def _save_many(self, items: list[tuple[str, Message]], overwrite: bool, ttl: float | None) -> None:
        for step_id, message in items:
            self._save(step_id, message, overwrite, None)


class OverwriteKeepsExpiryStore(TtlStore):
    """An overwrite without a ttl keeps the replaced artifact's expiry: what was saved for good disappears."""

    def _set_expiry(self, step_id: str, ttl: float | None) -> None:
        if ttl is not None:
            super()._set_expiry(step_id, ttl)


class BatchReadsExpiredStore(TtlStore):
    """Its batch read skips the expiry check (a query without the expiry filter): get_many serves expired
    artifacts that get reports missing."""

    def _get_many(self, step_ids: list[str]) -> dict[str, Message]:
        return {step_id: ExampleStore._get(self, step_id) for step_id in step_ids}


class PageListsExpiredStore(TtlStore):
    """Its paged listing skips the expiry check: list_page lists artifacts that list() leaves out."""

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        infos = sorted(ExampleStore._list(self), key=lambda info: info.step_id)
        return [info for info in infos if after is None or info.step_id > after][:limit]


# namespace -> the step ids SoftDeleteStore has deleted there: a tombstone table beside the shelf.
_TOMBSTONES: dict[str, set[str]] = {}


class SoftDeleteStore(ExampleStore):
    """Deletes softly, by tombstones that exists, get and list filter; its info and list_page read the shelf
    without them (a second query that forgets the filter), so they serve deleted artifacts on."""

    def _dead(self, step_id: str) -> bool:
        return step_id in _TOMBSTONES.get(self.namespace, set())

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        with _LOCK:
            if self._dead(step_id):
                _TOMBSTONES[self.namespace].discard(step_id)
                self._blobs.pop(step_id, None)
        super()._save(step_id, message, overwrite, ttl)

    def _get(self, step_id: str) -> Message:
        if self._dead(step_id):
            raise self._not_found(step_id)
        return super()._get(step_id)

    def _exists(self, step_id: str) -> bool:
        return not self._dead(step_id) and super()._exists(step_id)

    def _delete(self, step_id: str) -> bool:
        with _LOCK:
            if self._dead(step_id) or step_id not in self._blobs:
                return False
            _TOMBSTONES.setdefault(self.namespace, set()).add(step_id)
            return True

    def _list(self) -> Iterable[ArtifactInfo]:
        return [info for info in super()._list() if not self._dead(info.step_id)]

    def _clear(self) -> int:
        with _LOCK:
            count = sum(1 for step_id in self._blobs if not self._dead(step_id))
            self._blobs.clear()
            _TOMBSTONES.pop(self.namespace, None)
            return count

    def _info(self, step_id: str) -> ArtifactInfo:
        blob = self._blobs.get(step_id)
        if blob is None:
            raise self._not_found(step_id)
        return self.codec.header_of(blob, place=(self.namespace, step_id)).info(step_id)

    def _list_page(self, after: str | None, limit: int) -> list[ArtifactInfo]:
        infos = sorted(ExampleStore._list(self), key=lambda info: info.step_id)
        return [info for info in infos if after is None or info.step_id > after][:limit]


class SoftClearStore(SoftDeleteStore):
    """Clears softly too: every artifact of the namespace gets a tombstone."""

    def _clear(self) -> int:
        with _LOCK:
            live = [step_id for step_id in self._blobs if not self._dead(step_id)]
            _TOMBSTONES.setdefault(self.namespace, set()).update(live)
            return len(live)


# (namespace, key) -> the whole step id, for PrefixKeyedStore's listings: a column beside the key.
_WHOLE_IDS: dict[tuple[str, str], str] = {}


class PrefixKeyedStore(ExampleStore):
    """Keys artifacts by the first 200 bytes of their id (a key column's width), the whole id kept beside the
    key for listings: two long ids that share those bytes are one artifact."""

    def _key(self, step_id: str) -> str:
        return step_id.encode()[:200].decode("utf-8", "ignore")

    def _save(self, step_id: str, message: Message, overwrite: bool, ttl: float | None) -> None:
        super()._save(self._key(step_id), message, overwrite, ttl)
        with _LOCK:
            _WHOLE_IDS.setdefault((self.namespace, self._key(step_id)), step_id)

    def _get(self, step_id: str) -> Message:
        return super()._get(self._key(step_id))

    def _exists(self, step_id: str) -> bool:
        return super()._exists(self._key(step_id))

    def _delete(self, step_id: str) -> bool:
        return super()._delete(self._key(step_id))

    def _list(self) -> Iterable[ArtifactInfo]:
        for info in super()._list():
            yield dataclasses.replace(info, step_id=_WHOLE_IDS.get((self.namespace, info.step_id), info.step_id))


#: The credential of the stores below: a canary the kit must find wherever it shows.
TOKEN = "example-token-0f3c9a1e"


class TokenStore(ExampleStore):
    """The example backend with a credential, reported by ``_secret_values()`` and shown nowhere."""

    def _secret_values(self) -> Iterable[str]:
        return (TOKEN,)


class ReprLeakStore(TokenStore):
    """Shows its token in its repr, as a repr listing a client's settings does."""

    def __repr__(self) -> str:
        return f"<ReprLeakStore token={TOKEN!r}>"


class NotFoundLeakStore(TokenStore):
    """Adds the request it made, token and all, to its not-found errors as a note."""

    def _not_found(self, step_id: str) -> ArtifactNotFoundError:
        error = super()._not_found(step_id)
        error.add_note(f"GET /artifacts/{step_id}?token={TOKEN} answered 404")
        return error


class UnlistedSecretStore(ExampleStore):
    """Chains a client error that quotes its token to its not-found errors, and does not report the token in
    ``_secret_values()`` (so the base class cannot scrub it): only the ``secret_values`` fixture finds it."""

    def _get(self, step_id: str) -> Message:
        try:
            return super()._get(step_id)
        except ArtifactNotFoundError as exc:
            raise exc from PermissionError(f"no object for bearer {TOKEN}")


class UnreachableTokenStore(UnreachableStore):
    """Unreachable, and with a credential it keeps out of its errors."""

    def _secret_values(self) -> Iterable[str]:
        return (TOKEN,)

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        return BackendUnavailableError(f"example server refused the connection: {exc}")


class UnreachableLeakStore(UnreachableTokenStore):
    """Puts the URL it connects to, token included, in the errors it translates."""

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        return BackendUnavailableError(f"cannot reach http://example.invalid/?token={TOKEN}: {exc}")


#: The logger of the example backend's imagined client library, as botocore's or httpx's is to ours.
CLIENT_LOG = "exampleclient.wire"
OTHER_TOKEN = "example-second-key-5e0b77d2"


class TracingStore(TokenStore):
    """Logs each read at DEBUG, as a client library's wire trace does, without its credential."""

    def _get(self, step_id: str) -> Message:
        logging.getLogger(CLIENT_LOG).debug("GET /artifacts/%s", step_id)
        return super()._get(step_id)


class TraceLeakStore(TokenStore):
    """Logs each read at DEBUG with the request's headers, bearer token and all."""

    def _get(self, step_id: str) -> Message:
        logging.getLogger(CLIENT_LOG).debug("GET /artifacts/%s headers=%r", step_id, {"Authorization": TOKEN})
        return super()._get(step_id)


class ExceptionLeakStore(TokenStore):
    """Logs a clean line at DEBUG with an exception whose text quotes the token (``exc_info``)."""

    def _get(self, step_id: str) -> Message:
        try:
            return super()._get(step_id)
        except ArtifactNotFoundError:
            refused = PermissionError(f"GET /artifacts/{step_id}?token={TOKEN} answered 404")
            logging.getLogger(CLIENT_LOG).debug("request failed, not retried", exc_info=refused)
            raise


class HalfReportedStore(TokenStore):
    """Configured with two credentials (the fixture gives both), reports one in ``_secret_values()``: the
    errors it chains are scrubbed of ``TOKEN`` only. It shows neither where the kit looks."""


class UnreachableTraceLeakStore(UnreachableTokenStore):
    """Logs each failed attempt at DEBUG with the URL it tried, token included."""

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        logging.getLogger(CLIENT_LOG).debug("GET http://example.invalid/?token=%s failed: %s", TOKEN, exc)
        return super()._translate_error(exc)


class RefusingStore(TokenStore):
    """Reachable, but its server refuses its credentials: every access fails, as AccessDeniedError."""

    def __init__(self, *, namespace: str = "default", codec: Codec | None = None) -> None:
        super().__init__(namespace=namespace, codec=codec)
        self._blobs = _Refusing()

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        return AccessDeniedError(f"example server refused the credentials: {exc}")


class _Refusing(dict[str, bytes]):
    def _fail(self, *args: object) -> NoReturn:
        raise PermissionError(13, "authentication failed")

    get = __contains__ = __getitem__ = __setitem__ = pop = items = clear = __len__ = _fail  # type: ignore[assignment]


class RefusalLeakStore(RefusingStore):
    """Logs the credential its server refused, at WARNING, as a client that says which token failed does."""

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        logging.getLogger(CLIENT_LOG).warning("token %s refused by the server", TOKEN)
        return super()._translate_error(exc)


class RefusalAsBackendErrorStore(RefusingStore):
    """Reports refused credentials as a generic backend failure, which a caller may retry for ever."""

    def _translate_error(self, exc: Exception) -> ArtifactStoreError | None:
        return BackendError(f"example server failed: {exc}")


@contextmanager
def stores(cls: type[ExampleStore]) -> Iterator[Callable[..., ArtifactStore]]:
    """What the kit's ``new_store`` fixture gives its tests, for stores of ``cls``."""
    made: list[ArtifactStore] = []

    def build(namespace: str | None = None) -> ArtifactStore:
        store = cls(namespace=namespace or f"broken-{len(made)}-{id(made)}")
        made.append(store)
        return store

    try:
        yield build
    finally:
        for store in made:
            if not store.closed:
                ExampleStore._clear(store)
                store.close()
            _TOMBSTONES.pop(store.namespace, None)
        for key in [key for key in _WHOLE_IDS if key[0] in {store.namespace for store in made}]:
            del _WHOLE_IDS[key]


def test_kit_catches_a_store_that_serves_stale_artifacts() -> None:
    with stores(CachingStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_stores_of_one_namespace_see_each_others_changes(new_store)


@pytest.mark.parametrize(("name", "sibling"), [("Ns", "ns"), ("ns[1]", "ns1"), ("n*s", "nXYs")])
def test_kit_catches_a_clear_by_pattern(name: str, sibling: str) -> None:
    with stores(PatternClearStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_clear_and_list_keep_to_their_namespace_whatever_its_name(new_store, name, sibling)


def test_kit_catches_a_listing_of_one_page() -> None:
    with stores(OnePageStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_list_and_batches_beyond_a_page(new_store())


def test_kit_catches_infos_of_the_stored_size() -> None:
    with stores(StoredSizeStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_infos_describe_the_content_not_what_is_stored(new_store())


def test_kit_catches_reads_that_do_not_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    with stores(UnverifiedStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_reads_verify_the_stored_digest(new_store(), monkeypatch)


def test_kit_catches_reads_that_do_not_verify_of_a_store_that_passes_no_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with stores(UnplacedUnverifiedStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_reads_verify_the_stored_digest(new_store(), monkeypatch)


def test_kit_catches_codec_calls_without_the_artifacts_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a signing key such a store works; with one, an artifact copied to another id or namespace is
    # accepted, because its signature was never bound to its place.
    with stores(UnplacedStore) as new_store, pytest.raises(KIT_FAILURES, match=r"encode\(place=None\)"):
        StoreConformance().test_every_codec_call_names_the_artifacts_place(new_store(), monkeypatch)
    codec = Codec(signing_key=b"a signing key of the test")
    writer, reader = (
        UnplacedStore(namespace="unplaced-a", codec=codec),
        UnplacedStore(namespace="unplaced-b", codec=codec),
    )
    try:
        writer.save("approved", Message(content=b"approved"))
        reader._blobs["other"] = writer._blobs["approved"]  # a copy by someone without the key
        assert reader.get("other").content == b"approved"  # accepted: what the check guards against
    finally:
        for store in (writer, reader):
            ExampleStore._clear(store)
            store.close()


@pytest.mark.parametrize("cls", [NamelessStore, OverclaimingStore], ids=["nameless", "overclaiming"])
def test_kit_catches_a_store_unlike_its_registration(cls: type[ExampleStore]) -> None:
    with stores(cls) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_registered_as_it_names_itself(new_store())


def test_kit_catches_a_capability_declared_but_not_implemented() -> None:
    with stores(OverdeclaringStore) as new_store:
        with pytest.raises(KIT_FAILURES, match=r"declares list_namespaces but does not implement _namespaces\(\)"):
            StoreConformance().test_namespaces(new_store)
        # What a user calling it gets says the same, not that the backend cannot list namespaces.
        with pytest.raises(UnsupportedOperationError, match=r"declares capabilities\.list_namespaces"):
            new_store().namespaces()


def test_kit_catches_namespaces_that_stay_listed_once_emptied() -> None:
    with stores(RegistryNamespacesStore) as new_store, pytest.raises(KIT_FAILURES, match="were all deleted"):
        StoreConformance().test_namespaces(new_store)
    # The control: listing the namespaces that hold artifacts passes.
    with stores(NamespacesStore) as new_store:
        StoreConformance().test_namespaces(new_store)


def test_kit_catches_batch_workers_outside_the_callers_context() -> None:
    # Its get_many parsed JSON content that get, within limiting_json_content, refused.
    with stores(PooledGetManyStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_get_many_decodes_within_the_callers_context(new_store())


def test_kit_catches_batch_saves_outside_the_callers_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its save_many hashed again payloads the caller had verified within reusing_verified_digests.
    with stores(PooledSaveManyStore) as new_store, pytest.raises(KIT_FAILURES, match="outside its context"):
        StoreConformance().test_save_many_encodes_within_the_callers_context(new_store(), monkeypatch)


def test_kit_catches_pages_in_storage_name_order() -> None:
    with stores(StorageOrderPageStore) as new_store, pytest.raises(KIT_FAILURES):
        StoreConformance().test_list_page_is_in_step_id_order_after_any_id(new_store())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (BatchWithoutTtlStore, r"still exist after 10 s: \['short-many-a', 'short-many-b'\]"),
        (OverwriteKeepsExpiryStore, "kept the replaced artifact's expiry"),
        (BatchReadsExpiredStore, "get_many returned expired artifacts"),
        (PageListsExpiredStore, "list_page listed"),
    ],
    ids=["save_many", "overwrite", "get_many", "list_page"],
)
def test_kit_catches_a_ttl_that_does_not_hold_everywhere(cls: type[TtlStore], match: str) -> None:
    with stores(cls) as new_store, pytest.raises(KIT_FAILURES, match=match):
        StoreConformance().test_ttl(new_store())


@pytest.mark.timeout(60)
def test_the_ttl_check_passes_a_store_whose_ttl_holds_everywhere() -> None:
    # The control: the broken stores above fail the check because of their bug.
    with stores(TtlStore) as new_store:
        StoreConformance().test_ttl(new_store())


def test_kit_catches_a_failure_reported_as_absent() -> None:
    with pytest.raises(KIT_FAILURES, match="exists on an unreachable backend gave False"):
        StoreConformance().test_failures_are_raised_never_reported_as_absent(
            lambda namespace: AbsentOnFailureStore(namespace=namespace), ()
        )
    # The control: the same unreachable store, raising as it should, passes.
    StoreConformance().test_failures_are_raised_never_reported_as_absent(
        lambda namespace: UnreachableStore(namespace=namespace), ()
    )


@pytest.mark.timeout(30)
def test_kit_accepts_a_backend_that_refuses_to_build_a_store_when_unreachable() -> None:
    # A backend whose constructor connects cannot build a store on an unreachable server: the kit took its
    # BackendUnavailableError there for a failure, so no such backend could pass it.
    closed = free_port()  # nothing listens there
    StoreConformance().test_failures_are_raised_never_reported_as_absent(
        lambda namespace: ConnectingStore(closed, namespace=namespace), ()
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "refusal",
    [
        lambda exc: exc,  # the client's own error escapes
        lambda exc: BackendError(f"could not connect: {exc}"),  # not said to be unreachable, nor retryable
        lambda exc: ConfigurationError("check ARTIFACT_STORE_EXAMPLE_URL"),  # blames a setting
    ],
    ids=["raw-oserror", "backend-error", "configuration-error"],
)
def test_kit_catches_a_refusal_to_build_with_another_error(refusal: Callable[[OSError], Exception]) -> None:
    closed = free_port()
    with pytest.raises(KIT_FAILURES, match="building a store on an unreachable backend raised"):
        StoreConformance().test_failures_are_raised_never_reported_as_absent(
            lambda namespace: ConnectingStore(closed, namespace=namespace, refusal=refusal), ()
        )


@pytest.mark.parametrize(
    ("cls", "check", "match"),
    [
        (SoftDeleteStore, lambda kit, new_store: kit.test_delete(new_store()), r"info\('d' after delete\)"),
        (
            SoftClearStore,
            lambda kit, new_store: kit.test_clear_leaves_other_namespaces(new_store),
            r"info\('id0' after clear\)",
        ),
        (
            SoftDeleteStore,
            lambda kit, new_store: kit.test_stores_of_one_namespace_see_each_others_changes(new_store),
            r"info\('s' after another store's delete\)",
        ),
        (SoftDeleteStore, lambda kit, new_store: kit.test_matches_a_dict_model(new_store()), "DID NOT RAISE"),
    ],
    ids=["delete", "clear", "another-store", "state-machine"],
)
def test_kit_catches_reads_that_serve_deleted_artifacts(
    cls: type[ExampleStore], check: Callable[..., None], match: str
) -> None:
    # exists, get and list said the artifact was gone; info and list_page served it on.
    with stores(cls) as new_store, pytest.raises(KIT_FAILURES, match=match):
        check(DerandomizedKit(), new_store)


def test_kit_catches_long_ids_kept_as_one_artifact() -> None:
    with stores(PrefixKeyedStore) as new_store, pytest.raises(KIT_FAILURES, match="exists, never saved"):
        StoreConformance().test_long_ids_that_differ_only_at_the_end_stay_distinct(new_store())


@pytest.mark.parametrize(
    ("cls", "secrets", "match"),
    [
        (ReprLeakStore, (), r"repr\(store\) shows a secret"),
        (NotFoundLeakStore, (), "the error of get of a missing id shows a secret"),
        (UnlistedSecretStore, (TOKEN,), "the error of get of a missing id shows a secret"),
    ],
    ids=["repr", "note", "unlisted-cause"],
)
def test_kit_catches_a_secret_in_an_error_or_a_repr(
    cls: type[ExampleStore], secrets: tuple[str, ...], match: str
) -> None:
    with stores(cls) as new_store, pytest.raises(KIT_FAILURES, match=match) as info:
        StoreConformance().test_errors_and_reprs_show_no_secret(new_store, secrets)
    assert TOKEN not in str(info.value)  # the failure shows where, masked


def test_kit_skips_the_secret_check_for_a_backend_without_secrets() -> None:
    # As a declared-capability skip, which CI allows: the backend has nothing to leak. An unlisted secret is
    # only found through the secret_values fixture.
    for cls in (ExampleStore, UnlistedSecretStore):
        with stores(cls) as new_store, pytest.raises(pytest.skip.Exception, match=f"^{CAPABILITY_SKIP}"):
            StoreConformance().test_errors_and_reprs_show_no_secret(new_store, ())


def test_the_secret_check_passes_stores_that_keep_their_secrets() -> None:
    # The control: a credential reported by _secret_values(), or given by the fixture, and shown nowhere.
    for secrets in ((), (TOKEN,)):
        with stores(TokenStore) as new_store:
            StoreConformance().test_errors_and_reprs_show_no_secret(new_store, secrets)
        StoreConformance().test_failures_are_raised_never_reported_as_absent(
            lambda namespace: UnreachableTokenStore(namespace=namespace), secrets
        )


def test_kit_catches_a_secret_in_the_errors_of_an_unreachable_backend() -> None:
    with pytest.raises(KIT_FAILURES, match="the error of exists on an unreachable backend shows a secret") as info:
        StoreConformance().test_failures_are_raised_never_reported_as_absent(
            lambda namespace: UnreachableLeakStore(namespace=namespace), ()
        )
    assert TOKEN not in str(info.value)


@pytest.mark.timeout(30)
def test_kit_catches_a_secret_in_a_refusal_to_build_a_store() -> None:
    closed = free_port()

    def refusal(exc: OSError) -> Exception:
        return BackendUnavailableError(f"cannot reach http://user:{TOKEN}@{LOOPBACK}:{closed}: {exc.strerror}")

    with pytest.raises(KIT_FAILURES, match="the refusal to build a store on an unreachable backend shows a secret"):
        StoreConformance().test_failures_are_raised_never_reported_as_absent(
            lambda namespace: ConnectingStore(closed, namespace=namespace, refusal=refusal), (TOKEN,)
        )


@pytest.fixture
def quiet_logging() -> Iterator[logging.Handler]:
    """The logging of a process that logs WARNING and above (the default), with a handler on the root that
    keeps what it is handed (as pytest's captured log and an application's handlers do); put back after."""
    root = logging.getLogger()
    level, disabled = root.level, logging.root.manager.disable
    handler = _Kept()
    root.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.disable(disabled)


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (TraceLeakStore, f"a DEBUG record of logger '{CLIENT_LOG}', logged while the kit saved, .* shows a secret"),
        (ExceptionLeakStore, f"a DEBUG record of logger '{CLIENT_LOG}', .* shows a secret"),
    ],
    ids=["message", "exc_info"],
)
@pytest.mark.parametrize("hidden", [False, True], ids=["propagating", "hidden"])
def test_kit_catches_a_secret_in_a_debug_log_record(
    cls: type[ExampleStore], match: str, hidden: bool, quiet_logging: _Kept
) -> None:
    # Nobody logs DEBUG here, as in most test runs: the kit turns it on for its check. "hidden": the client's
    # logger was set to WARNING and kept from propagating, as an application's logging config may do.
    client = logging.getLogger(CLIENT_LOG)
    if hidden:
        client.setLevel(logging.WARNING)
        client.propagate = False
    try:
        with stores(cls) as new_store, pytest.raises(KIT_FAILURES, match=match) as info:
            StoreConformance().test_errors_and_reprs_show_no_secret(new_store, ())
        assert (client.level, client.propagate) == ((logging.WARNING, False) if hidden else (logging.NOTSET, True))
    finally:
        client.setLevel(logging.NOTSET)
        client.propagate = True
    assert TOKEN not in str(info.value)  # the failure shows the record masked
    # The levels the kit raised are put back, and the handlers that were there saw only what they would have:
    # pytest prints its captured log with a failure, which would have shown the token.
    assert logging.getLogger().level == logging.WARNING
    assert quiet_logging.records == []


def test_kit_catches_a_secret_logged_while_a_backend_is_unreachable(quiet_logging: _Kept) -> None:
    with pytest.raises(
        KIT_FAILURES, match=f"a DEBUG record of logger '{CLIENT_LOG}', logged while every operation failed on an"
    ) as info:
        StoreConformance().test_failures_are_raised_never_reported_as_absent(
            lambda namespace: UnreachableTraceLeakStore(namespace=namespace), ()
        )
    assert TOKEN not in str(info.value)
    assert quiet_logging.records == []


def test_the_log_check_passes_a_store_whose_records_keep_the_secret_out(quiet_logging: _Kept) -> None:
    # The control: the same DEBUG trace without the token passes, so the stores above fail for the token.
    with stores(TracingStore) as new_store:
        StoreConformance().test_errors_and_reprs_show_no_secret(new_store, (TOKEN,))
    assert quiet_logging.records == []


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (RefusalLeakStore, f"a WARNING record of logger '{CLIENT_LOG}', logged while every operation failed on a "
         "backend that refuses the store's credentials, shows a secret"),
        (RefusalAsBackendErrorStore, "exists on a backend that refuses the store's credentials gave "
         r"BackendError\(.*\) instead of raising an AccessDeniedError"),
    ],
    ids=["logged", "untyped"],
)  # fmt: skip
def test_kit_catches_refused_credentials_logged_or_untyped(cls: type[RefusingStore], match: str) -> None:
    with pytest.raises(KIT_FAILURES, match=match) as info:
        StoreConformance().test_refused_credentials_are_denied_and_show_no_secret(
            lambda namespace: cls(namespace=namespace), ()
        )
    assert TOKEN not in str(info.value)


def test_the_refused_credentials_check_passes_a_store_that_denies_quietly() -> None:
    # The control: refused credentials as AccessDeniedError, shown nowhere.
    StoreConformance().test_refused_credentials_are_denied_and_show_no_secret(
        lambda namespace: RefusingStore(namespace=namespace), (TOKEN,)
    )


def test_kit_skips_the_refused_credentials_check_without_its_fixture() -> None:
    with pytest.raises(pytest.skip.Exception, match=f"^{CAPABILITY_SKIP} no make_unauthorized_store fixture"):
        StoreConformance().test_refused_credentials_are_denied_and_show_no_secret(None, (TOKEN,))


def test_kit_catches_a_declared_secret_the_store_does_not_report() -> None:
    # HalfReportedStore leaks nothing the kit provokes; its errors elsewhere would keep OTHER_TOKEN in clear.
    match = r"HalfReportedStore._secret_values\(\) does not report 1 of the secret_values fixture's values \(27 "
    with stores(HalfReportedStore) as new_store, pytest.raises(KIT_FAILURES, match=match) as info:
        StoreConformance().test_errors_and_reprs_show_no_secret(new_store, (TOKEN, OTHER_TOKEN))
    assert TOKEN not in str(info.value)
    assert OTHER_TOKEN not in str(info.value)


@pytest.mark.parametrize(
    "check",
    [
        lambda kit, new_store, monkeypatch: kit.test_stores_of_one_namespace_see_each_others_changes(new_store),
        lambda kit, new_store, monkeypatch: kit.test_clear_and_list_keep_to_their_namespace_whatever_its_name(
            new_store, "ns[1]", "ns1"
        ),
        lambda kit, new_store, monkeypatch: kit.test_list_and_batches_beyond_a_page(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_reads_verify_the_stored_digest(new_store(), monkeypatch),
        lambda kit, new_store, monkeypatch: kit.test_registered_as_it_names_itself(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_get_many_decodes_within_the_callers_context(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_save_many_encodes_within_the_callers_context(
            new_store(), monkeypatch
        ),
        lambda kit, new_store, monkeypatch: kit.test_list_page_is_in_step_id_order_after_any_id(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_infos_describe_the_content_not_what_is_stored(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_every_codec_call_names_the_artifacts_place(
            new_store(), monkeypatch
        ),
        lambda kit, new_store, monkeypatch: kit.test_delete(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_clear_leaves_other_namespaces(new_store),
        lambda kit, new_store, monkeypatch: kit.test_matches_a_dict_model(new_store()),
        lambda kit, new_store, monkeypatch: kit.test_long_ids_that_differ_only_at_the_end_stay_distinct(new_store()),
    ],
    ids=[
        "stale",
        "clear",
        "page",
        "verify",
        "registration",
        "context",
        "save_context",
        "list_page",
        "infos",
        "place",
        "delete",
        "clear_other",
        "state_machine",
        "long_ids",
    ],
)
def test_the_same_checks_pass_the_example_backend(check: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: each check above fails because of the bug, not because it fails everything.
    with stores(ExampleStore) as new_store:
        check(StoreConformance(), new_store, monkeypatch)


@pytest.mark.parametrize("check", ["get_many", "save_many"])
def test_batches_on_a_context_thread_pool_pass(check: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fix the docs give for PooledGetManyStore and PooledSaveManyStore: the same pools, started as
    # ContextThreadPoolExecutor, pass the checks those fail.
    kit = StoreConformance()
    with stores(ContextPooledStore) as new_store:
        if check == "get_many":
            kit.test_get_many_decodes_within_the_callers_context(new_store())
        else:
            kit.test_save_many_encodes_within_the_callers_context(new_store(), monkeypatch)
