"""Canary secrets never show: not in a log record (DEBUG, the whole module), a repr, a str, an exception's
text, its chained causes or its traceback, nor in what the command line prints.

The servers of the whole session already run with canaries (``reliability_backends``): the Redis password
(in the URL's user info), the HTTP token, the S3 secret key. Here every backend is also driven into its
error paths with them (wrong password or token, unreachable server, invalid URL with user info, missing
bucket), and the signing key is a canary too.
"""

from __future__ import annotations

import logging
import pickle
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import reliability_backends as rb
from pydantic import SecretStr

from artifactstore_core import Codec, Message, create_store
from artifactstore_core.cli import main
from artifactstore_core.errors import (
    AccessDeniedError,
    ArtifactCorruptedError,
    ArtifactStoreError,
    BackendError,
    ConfigurationError,
)
from artifactstore_core.testing_servers import free_port


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # What a traceback shows: the cause, else the context unless ``raise ... from None`` hid it.
        hidden = current.__suppress_context__
        current = current.__cause__ or (None if hidden else current.__context__)


class Texts:
    """Everything a user or a log could show: reprs, strs, errors with their causes and tracebacks."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def show(self, label: str, *objects: Any) -> None:
        for obj in objects:
            self.items.append((label, f"{obj!s} {obj!r}"))

    def error(self, label: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        for link in chain(exc):
            text += f" {link!s} {link!r} {link.args!r} {getattr(link, '__dict__', {})!r}"
        if isinstance(exc, ArtifactStoreError):
            # Errors cross process pools pickled: the pickle must not carry a secret either.
            text += repr(pickle.dumps(exc))
        self.items.append((label, text))

    def expect(self, label: str, error: type[BaseException], call: Callable[[], Any]) -> None:
        """Run ``call``, which must raise ``error``; keep the error's texts."""
        with pytest.raises(error) as info:
            call()
        self.error(label, info.value)

    def run(self, label: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except BaseException as exc:
            self.error(label, exc)
            raise
        self.show(label, result)
        return result

    def leaks(self) -> list[str]:
        found = []
        for label, text in self.items:
            for secret in rb.leaked(text) + rb.leaked(text, rb.IDENTIFIERS):
                found.append(f"{label}: {secret!r} in {text[:300]!r}")
        return found


def exercise(texts: Texts, store: Any) -> None:
    """Normal use and the ordinary errors, through one store."""
    texts.show("store", store, store.codec)
    store.save("k", Message(content=b"v", metadata={"m": 1}))
    texts.run("get", lambda: store.get("k"))
    texts.run("list", lambda: list(store.list()))
    texts.run("info", lambda: store.info("k"))
    texts.expect("conflict", ArtifactStoreError, lambda: store.save("k", Message(content=b"other")))
    texts.expect("missing", ArtifactStoreError, lambda: store.get("missing"))
    store.clear()
    store.close()
    texts.expect("closed", ArtifactStoreError, lambda: store.get("k"))


def cli(texts: Texts, capsys: pytest.CaptureFixture[str], label: str, *argv: str) -> None:
    for debug in ((), ("--debug",)):
        try:
            main([*debug, *argv])
        except SystemExit:
            pass
        except Exception as exc:  # --debug lets the error through: its traceback is what a user sees
            texts.error(f"cli {label} {debug}", exc)
        out = capsys.readouterr()
        texts.items.append((f"cli {label} {debug}", out.out + out.err))


@pytest.fixture
def texts(canary_logging: rb.CanaryHandler) -> Iterator[Texts]:
    collected = Texts()
    yield collected
    # The scan is live: a DEBUG record logged now reaches the canary handler.
    before = canary_logging.records
    logging.getLogger("artifactstore.reliability").debug("probe")
    assert canary_logging.records == before + 1, "the canary handler does not see DEBUG records"
    assert collected.leaks() == [], "\n".join(collected.leaks())
    assert canary_logging.leaks == [], "\n".join(canary_logging.leaks)


def closed_port() -> int:
    return free_port()


def using(make: Callable[[], Any], call: Callable[[Any], Any]) -> Callable[[], Any]:
    """A call on a store built just for it, and closed after it whatever happens."""

    def run() -> Any:
        store = make()
        try:
            return call(store)
        finally:
            store.close()

    return run


@pytest.mark.timeout(180)
def test_canaries_never_show(
    backend: rb.Backend,
    texts: Texts,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
    request: pytest.FixtureRequest,
) -> None:
    ns = f"rel-secret-{uuid.uuid4().hex[:8]}"
    exercise(texts, backend.make(ns))
    texts.show("config", backend.config)
    # The signing key, for every backend, through the environment as a deployment would set it.
    monkeypatch.setenv("ARTIFACT_STORE_SIGNING_KEY", rb.SIGNING_KEY)
    options = dict(backend.config.options) if backend.config is not None else {}
    with create_store(backend.name, namespace=ns, **options) as signed:
        texts.show("signed store", signed, signed.codec)
        if backend.name == "http":
            # The artifact server verifies what it is sent with its own key (docs/http.md); this one has none.
            message = Message(content=b"s")
            texts.expect("signed save, keyless server", ConfigurationError, lambda: signed.save("signed", message))
        else:
            signed.save("signed", Message(content=b"s"))
        if backend.name not in ("memory", "http"):  # memory keeps objects: nothing to sign
            with backend.make(ns) as unsigned:
                texts.expect("signed read without the key", ConfigurationError, lambda: unsigned.get("signed"))
                unsigned.save("plain", Message(content=b"p"))
            texts.expect("unsigned read with a key", ArtifactCorruptedError, lambda: signed.get("plain"))
            with create_store(backend.name, namespace=ns, **options) as again:
                assert again.get("signed").content == b"s"
        signed.clear()
    foreign = Codec(signing_key=b"some other key")
    unsigned_blob = Codec().encode(Message(content=1)).to_bytes()
    texts.expect("wrong key", ArtifactCorruptedError, lambda: foreign.decode_bytes(unsigned_blob))
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", backend.name)
    monkeypatch.setenv("ARTIFACT_STORE_NAMESPACE", ns)
    if backend.name == "filesystem":
        monkeypatch.setenv("ARTIFACT_STORE_FILESYSTEM_ROOT", str(backend.extra["root"]))
    SPECIFIC[backend.name](backend, texts, monkeypatch, request)
    for argv in (["config", "--json"], ["config"], ["doctor"], ["ls"], ["stat", "missing"]):
        cli(texts, capsys, " ".join(argv), *argv)


def redis_paths(backend: rb.Backend, texts: Texts, monkeypatch: pytest.MonkeyPatch, request: Any) -> None:
    from artifactstore_redis import RedisSettings, RedisStore

    port = backend.upstream_port
    assert port is not None
    good = rb.redis_url(port)
    monkeypatch.setenv("ARTIFACT_STORE_REDIS_URL", good)
    texts.show("settings", RedisSettings(url=SecretStr(good)), RedisSettings(url=SecretStr(good)).model_dump_json())
    wrong = RedisSettings(url=SecretStr(rb.redis_url(port, rb.URL_PASSWORD)))
    with RedisStore(wrong, namespace="wrong") as store:
        texts.show("wrong store", store)
        texts.expect("wrong password", AccessDeniedError, lambda: store.save("k", Message(content=1)))
    by_field = RedisSettings(url=SecretStr(f"redis://127.0.0.1:{port}/0"), password=SecretStr(rb.URL_PASSWORD))
    texts.show("password field", by_field)
    texts.expect("wrong password field", AccessDeniedError, using(lambda: RedisStore(by_field), lambda s: s.get("k")))
    gone = RedisSettings(url=SecretStr(rb.redis_url(closed_port())), socket_connect_timeout=0.5, retry_attempts=0)
    texts.expect("unreachable", BackendError, using(lambda: RedisStore(gone), lambda s: s.get("k")))
    bad = f"redis://default:{rb.URL_PASSWORD}@127.0.0.1:notaport/0"
    texts.expect("invalid url", ConfigurationError, lambda: create_store("redis", url=bad))
    texts.expect("unknown option", ConfigurationError, lambda: create_store("redis", url=good + "?socket_timeout=1"))


def http_paths(backend: rb.Backend, texts: Texts, monkeypatch: pytest.MonkeyPatch, request: Any) -> None:
    from artifactstore_http import HttpSettings, HttpStore

    assert backend.config is not None
    url = backend.config.options["endpoint"]
    monkeypatch.setenv("ARTIFACT_STORE_HTTP_ENDPOINT", url)
    monkeypatch.setenv("ARTIFACT_STORE_HTTP_TOKEN", rb.HTTP_TOKEN)
    texts.show("settings", HttpSettings(endpoint=url, token=SecretStr(rb.HTTP_TOKEN)))
    wrong = HttpSettings(endpoint=url, token=SecretStr(rb.URL_PASSWORD))
    texts.expect("wrong token", AccessDeniedError, using(lambda: HttpStore(wrong, namespace="w"), lambda s: s.get("k")))
    userinfo = url.replace("http://", f"http://user:{rb.URL_PASSWORD}@")
    texts.expect("user info", ConfigurationError, lambda: create_store("http", endpoint=userinfo))
    gone = HttpSettings(endpoint=f"http://127.0.0.1:{closed_port()}", token=SecretStr(rb.HTTP_TOKEN), retries=0)
    texts.expect("unreachable", BackendError, using(lambda: HttpStore(gone), lambda s: s.get("k")))


def http_settings_hide_input() -> None:
    from artifactstore_http import HttpSettings

    HttpSettings(endpoint=f"http://user:{rb.URL_PASSWORD}@127.0.0.1:1")


def s3_paths(backend: rb.Backend, texts: Texts, monkeypatch: pytest.MonkeyPatch, request: Any) -> None:
    from artifactstore_s3 import S3Settings, S3Store

    assert backend.config is not None
    options = backend.config.options
    for name, value in options.items():
        monkeypatch.setenv(f"ARTIFACT_STORE_S3_{name.upper()}", str(value))
    settings = S3Settings(**options)
    texts.show("settings", settings, settings.model_dump_json())
    missing = S3Settings(**{**options, "bucket": "no-such"})
    texts.expect("missing bucket", ConfigurationError, using(lambda: S3Store(missing), lambda s: s.get("k")))
    gone = {**options, "endpoint_url": f"http://127.0.0.1:{closed_port()}", "max_attempts": 1, "connect_timeout": 0.5}
    texts.expect("unreachable", BackendError, using(lambda: S3Store(S3Settings(**gone)), lambda s: s.get("k")))


def no_paths(backend: rb.Backend, texts: Texts, monkeypatch: pytest.MonkeyPatch, request: Any) -> None:
    """memory and filesystem have no secrets of their own: the signing key above is theirs."""


SPECIFIC: dict[str, Callable[[rb.Backend, Texts, pytest.MonkeyPatch, Any], None]] = {
    "memory": no_paths,
    "filesystem": no_paths,
    "redis": redis_paths,
    "http": http_paths,
    "s3": s3_paths,
}


# -- leaks found by this suite, fixed, and pinned ------------------------------------------------------


@pytest.mark.timeout(180)
def test_s3_endpoint_and_proxy_from_the_environment_keep_their_password(
    moto: tuple[str, int, str], texts: Texts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ARTIFACT_STORE_S3_ENDPOINT_URL refuses user info, but botocore's own AWS_ENDPOINT_URL and the proxy
    variables are not ours to check: botocore logs the URL and quotes it in its exceptions, which we chain and
    (the TLS failure) quoted in our own message."""
    from artifactstore_s3 import S3Settings, S3Store

    endpoint, port, bucket = moto
    options: dict[str, Any] = {
        "bucket": bucket,
        "region": rb.REGION,
        "access_key_id": rb.S3_ACCESS_KEY,
        "secret_access_key": rb.S3_SECRET_KEY,
        "max_attempts": 1,
        "connect_timeout": 0.5,
        "read_timeout": 2,
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for spelled in (name, name.lower()):
            monkeypatch.delenv(spelled, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("ARTIFACT_STORE_BACKEND", "s3")
    for name, value in options.items():
        monkeypatch.setenv(f"ARTIFACT_STORE_S3_{name.upper()}", str(value))

    def through(url: str) -> str:
        return f"{url.split('://')[0]}://{rb.S3_ACCESS_KEY}:{rb.URL_PASSWORD}@{url.split('://')[1]}"

    cases = {
        # The endpoint answers: botocore's DEBUG records quote the URL of every request.
        "live endpoint": (through(endpoint), None),
        # EndpointConnectionError quotes it, chained as the cause.
        "refused endpoint": (through(f"http://127.0.0.1:{closed_port()}"), BackendError),
        # Our TLS message quoted botocore's text, URL included.
        "tls endpoint": (through(f"https://127.0.0.1:{port}"), BackendError),
    }
    for label, (url, error) in cases.items():
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        call = using(lambda: S3Store(S3Settings(**options), namespace="env-endpoint"), lambda s: s.get("k"))
        if error is None:
            texts.expect(label, ArtifactStoreError, call)  # not found: the request went through
        else:
            texts.expect(label, error, call)
        for argv in (["doctor"], ["doctor", "--json"], ["get", "k"]):
            cli(texts, capsys, f"{label} {' '.join(argv)}", *argv)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    # A proxy whose scheme urllib3 does not know: the ProxyConnectionError's cause quotes its URL.
    monkeypatch.setenv("ARTIFACT_STORE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("HTTP_PROXY", f"ftp://user:{rb.URL_PASSWORD}@127.0.0.1:{closed_port()}")
    texts.expect(
        "proxy",
        BackendError,
        using(lambda: S3Store(S3Settings(**options, endpoint_url=endpoint)), lambda s: s.get("k")),
    )
    cli(texts, capsys, "proxy doctor", "doctor")


def test_http_settings_error_does_not_repeat_the_url() -> None:
    with pytest.raises(ValueError, match="user info") as info:
        http_settings_hide_input()
    assert rb.URL_PASSWORD not in str(info.value)


def test_s3_endpoint_with_user_info_is_refused_or_masked() -> None:
    from artifactstore_s3 import S3Settings

    try:
        settings = S3Settings(bucket="b", endpoint_url=f"http://user:{rb.URL_PASSWORD}@127.0.0.1:1")
    except ValueError as exc:
        shown = str(exc)
    else:
        shown = repr(settings)
    assert rb.URL_PASSWORD not in shown


def test_the_canary_checks_catch_a_leak() -> None:
    """The checks above could fail: a leaked canary, in any of its spellings, is found."""
    handler = rb.CanaryHandler()
    logger = logging.getLogger("artifactstore.reliability.selftest")
    logger.propagate = False  # keep the planted leak away from the module's own canary handler
    logger.addHandler(handler)
    try:
        logger.debug("connecting to %s", rb.redis_url(6379))
        logger.warning("token %s", rb.HTTP_TOKEN[:4])  # a prefix alone is no leak
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert len(handler.leaks) == 1
    texts = Texts()
    texts.show("percent-encoded", f"url with {quote(rb.REDIS_PASSWORD + '/', safe='')}")
    texts.error("chained", ValueError("outer").with_traceback(None))
    try:
        raise ArtifactStoreError("clean") from RuntimeError(rb.S3_SECRET_KEY)
    except ArtifactStoreError as exc:
        texts.error("cause", exc)
    assert [label for label, text in texts.items if rb.leaked(text)] == ["percent-encoded", "cause"]
