"""Keeps S3 credentials and request signatures out of botocore's own log records.

botocore's DEBUG wire trace logs every request it sends with its headers (``botocore.endpoint``), the
canonical request it signs and the signature (``botocore.auth``) and the response bodies it parses
(``botocore.parsers``): the session token (``X-Amz-Security-Token``), the access key id (in
``Authorization``) and each request's signature appear there in clear, an S3 ``SignatureDoesNotMatch``
answer quotes the canonical request, token included, and an STS ``AssumeRole`` answer holds a whole set of
temporary credentials. A user who turns on DEBUG logging for a whole pipeline
(``logging.basicConfig(level=logging.DEBUG)``) would write them to the log. A filter on botocore's loggers
replaces, in those records, with ``**********`` as errors do (:func:`artifactstore_core.errors.redact`):

- every secret registered by an open store: those of its settings (``ARTIFACT_STORE_S3_ACCESS_KEY_ID``,
  ``_SECRET_ACCESS_KEY``, ``_SESSION_TOKEN``) and those its client resolved from boto3's chain
  (environment, profiles, roles), registered again whenever refreshable credentials change;
- the password of any URL's user info (``http://AKIA...:***@host``), as errors show it: botocore logs the
  endpoint URL it was given, and one from ``AWS_ENDPOINT_URL`` may hold credentials;
- whatever botocore writes that is a credential or a signature, whoever's it is (credentials that are
  not registered yet: a role's answer is logged before the client uses it): the ``Signature=`` of an
  ``Authorization`` header or a presigned URL, the signature ``botocore.auth`` logs, the value of an
  ``X-Amz-Security-Token`` header or query parameter, and the ``SecretAccessKey`` and ``SessionToken`` of
  an STS or SSO answer.

A record's exception (``exc_info``: botocore logs the exception of a request that failed, whose text quotes
the endpoint URL) is replaced by :func:`~artifactstore_core.errors.scrub_exception`'s stand-in when its text
holds any of these.

The filter costs nothing while those loggers are not enabled for DEBUG: their records are then never made.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from artifactstore_core.errors import REDACTED, redact, scrub_exception

if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from mypy_boto3_s3 import S3Client

__all__ = ["SecretsFilter", "SECRETS_FILTER", "StoreSecrets"]

# botocore's loggers that log requests, signing input or responses; any other botocore, boto3 or s3transfer
# logger that exists when a store registers its secrets gets the filter too (a filter on a logger applies
# only to records logged on that very logger, not to those its children pass up).
_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers", "botocore.hooks", "botocore.retryhandler")
_FAMILIES = ("botocore", "boto3", "s3transfer")

# What botocore writes that is secret whoever's credentials it is; each alternative has one named group, the
# part the mask replaces.
# An AWS signature is 64 hex digits: with its string to sign it is a valid request for up to 15 minutes.
_WIRE_SECRETS = re.compile(
    "|".join(
        (
            # Authorization: ... Credential=<key id>/<date>/...; a presigned URL's X-Amz-Credential=<id>%2F...
            r"Credential=(?P<keyid>[^/%\s,'\"&]+)",
            # Authorization: ... Signature=<hex>; a presigned URL's X-Amz-Signature=<hex> (or, signed with the
            # legacy SigV2, Signature=<base64, URL-quoted>).
            r"Signature=(?P<sig>[^&\s,;'\"]+)",
            # A SigV2 presigned URL's AWSAccessKeyId=<key id>.
            r"AWSAccessKeyId=(?P<v2key>[^&\s,;'\"]+)",
            # A SigV2 Authorization header: "AWS <key id>:<signature>".
            r"Authorization['\"]?:\s*b?['\"]?AWS (?P<v2>[^'\"\s]+)",
            # botocore.auth's "Signature:\n<hex>".
            r"Signature:\s*(?P<logged>[0-9a-fA-F]{16,})",
            # The header in a request's repr ('X-Amz-Security-Token': b'...'), in the canonical request
            # (x-amz-security-token:...) and as a presigned URL's query parameter (X-Amz-Security-Token=...).
            # (S3 Express sessions send theirs as X-Amz-S3session-Token.)
            r"X-Amz-(?:Security|S3session)-Token(?:['\"]?:\s*b?['\"]|:|=)(?P<token>[^'\"\s&,;]+)",
            # SSO's bearer token header.
            r"x-amz-sso_bearer_token(?:['\"]?:\s*b?['\"]|:|=)(?P<bearer>[^'\"\s&,;]+)",
            # STS answers (XML) and SSO or container answers (JSON) carrying temporary credentials, and an S3
            # SignatureDoesNotMatch answer naming the key id.
            r"<(?:SecretAccessKey|SessionToken|AccessKeyId|AWSAccessKeyId)>(?P<xml>[^<]+)<",
            r"[\"'](?:SecretAccessKey|SessionToken|Token|AccessKeyId)[\"']\s*:\s*[\"'](?P<json>[^\"']+)[\"']",
        )
    ),
    re.IGNORECASE,
)


def _mask_wire_secrets(text: str) -> str:
    """``text`` with every credential or signature botocore may write (:data:`_WIRE_SECRETS`) masked."""

    def mask(match: re.Match[str]) -> str:
        name = match.lastgroup
        if name is None:  # cannot happen: every alternative has a named group
            return REDACTED
        start, end = match.span(name)
        whole = match.group(0)
        offset = match.start()
        return whole[: start - offset] + REDACTED + whole[end - offset :]

    return _WIRE_SECRETS.sub(mask, text)


class SecretsFilter(logging.Filter):
    """A :class:`logging.Filter` that masks the registered secrets, and every credential or signature botocore
    writes, in a record's message (it drops none).

    Thread-safe: stores register and unregister from any thread while records are filtered in others.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._groups: dict[int, tuple[str, ...]] = {}
        self._next = 0
        # Replaced whole under the lock, read without it: a record is filtered against one consistent set.
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> int:
        """Mask ``secrets`` from now on (installing the filter on botocore's loggers); return a token for
        :meth:`remove`. Raises nothing."""
        group = tuple(secret for secret in secrets if secret)
        with self._lock:
            self._next += 1
            token = self._next
            self._groups[token] = group
            self._secrets = tuple({secret for values in self._groups.values() for secret in values})
            self._install()
        return token

    def update(self, token: int, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` instead of what was registered under ``token`` (e.g. credentials that were
        refreshed). Does nothing once ``token`` is removed: a closed store registers nothing again. Raises
        nothing."""
        group = tuple(secret for secret in secrets if secret)
        with self._lock:
            if token in self._groups:
                self._groups[token] = group
                self._secrets = tuple({secret for values in self._groups.values() for secret in values})

    def remove(self, token: int) -> None:
        """Stop masking the secrets registered under ``token`` (unless another registration holds them too).
        Idempotent; raises nothing."""
        with self._lock:
            if self._groups.pop(token, None) is not None:
                self._secrets = tuple({secret for values in self._groups.values() for secret in values})

    def _install(self) -> None:
        names = set(_LOGGERS)
        # Loggers botocore made when its modules were imported (a client's creation imports them).
        names.update(
            name
            for name in list(logging.Logger.manager.loggerDict)
            if any(name == family or name.startswith(family + ".") for family in _FAMILIES)
        )
        for name in names:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted fails in the handler, as it would without us
            return True
        secrets = self._secrets
        # The known secrets first: one of them may be what a pattern would cut in the middle of.
        clean = _mask_wire_secrets(redact(message, secrets))
        if clean != message:
            record.msg = clean
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            shown = scrub_exception(record.exc_info[1], secrets)
            if shown is not record.exc_info[1]:
                record.exc_info = (type(shown), shown, shown.__traceback__)
                record.exc_text = None  # a handler formats it from the stand-in
        return True

    def _after_fork(self) -> None:
        # A lock held by another thread at the fork would never be released in the child.
        self._lock = threading.Lock()


#: The one filter of this process, shared by every store.
SECRETS_FILTER = SecretsFilter()


class StoreSecrets:
    """What one store masks in botocore's log records, registered in :data:`SECRETS_FILTER` from its creation
    until :meth:`forget`: the secrets of its settings, and the credentials its client signs with, whatever
    their source (settings, environment, a profile, a role), as :meth:`watch` finds them.

    Refreshable credentials (a role's, an SSO login's) change while the store is open: each new set is
    registered before the second request it signs (see :meth:`watch`), and the set before it stays masked
    too, for a request of another thread still logging it. Thread-safe.
    """

    def __init__(self, fixed: Iterable[str]) -> None:
        self._fixed = tuple(secret for secret in fixed if secret)
        self._lock = threading.Lock()
        # The latest two sets of resolved credentials, oldest first.
        self._resolved: tuple[tuple[str, ...], ...] = ()
        self._token = SECRETS_FILTER.add(self._fixed)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` too, for as long as this store's own (e.g. the password of the endpoint's user info,
        known once the client is built). Raises nothing."""
        with self._lock:
            self._fixed = (*self._fixed, *(secret for secret in secrets if secret and secret not in self._fixed))
            SECRETS_FILTER.update(self._token, self.secrets)

    def watch(self, client: S3Client, credentials: Credentials | None) -> None:
        """Register, before each request ``client`` signs, the credentials it signs with (``credentials``, the
        object the client was built with; ``None``: it has none, and its requests fail for want of them). Raises
        nothing.

        Refreshable credentials are never refreshed here (that would be a second call to STS or SSO per
        refresh): when they are due, the signer refreshes them and the next request registers the new set.
        The request in between logs nothing of them that the patterns of the filter do not mask (its key id,
        token and signature; botocore never logs the secret key).
        """
        if credentials is None:
            return
        due: Callable[[], bool] = getattr(credentials, "refresh_needed", lambda: False)

        def before_sign(**_: Any) -> None:
            try:
                if due():
                    return
                frozen = credentials.get_frozen_credentials()
            except Exception:  # the signer asks again at once and raises what botocore raises
                return
            self._saw((frozen.access_key or "", frozen.secret_key or "", frozen.token or ""))

        client.meta.events.register("before-sign.s3", before_sign)

    def _saw(self, values: tuple[str, ...]) -> None:
        current = tuple(value for value in values if value)
        resolved = self._resolved
        if resolved and resolved[-1] == current:  # every request but the first after a change
            return
        with self._lock:
            if self._resolved and self._resolved[-1] == current:
                return  # another thread registered it meanwhile
            self._resolved = (*self._resolved[-1:], current)
            SECRETS_FILTER.update(self._token, self.secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret this store knows: its settings' and the latest two sets of resolved credentials."""
        return self._fixed + tuple(secret for group in self._resolved for secret in group)

    def forget(self) -> None:
        """Stop masking this store's secrets (unless another store holds them too). Idempotent; raises nothing."""
        SECRETS_FILTER.remove(self._token)

    def after_fork(self) -> None:
        """Reset the lock in a forked child (another thread may have held it at the fork)."""
        self._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=SECRETS_FILTER._after_fork)
