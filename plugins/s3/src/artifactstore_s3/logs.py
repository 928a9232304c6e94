"""Keeps the credentials of the store's settings out of botocore's own log records.

botocore's DEBUG wire trace logs every request it sends with its headers (``botocore.endpoint``), the
canonical request it signs (``botocore.auth``) and the response bodies it parses (``botocore.parsers``): the
session token (``X-Amz-Security-Token``) and the access key id (in ``Authorization``) appear there in clear,
and an S3 ``SignatureDoesNotMatch`` answer quotes the canonical request, token included. A user who turns
on DEBUG logging for a whole pipeline (``logging.basicConfig(level=logging.DEBUG)``) would write them to
the log. A filter on botocore's loggers replaces, in those records, every secret of an open store's
settings with ``**********``, as errors do (:func:`artifactstore_core.errors.redact`).

Only the secrets of the settings (``ARTIFACT_STORE_S3_ACCESS_KEY_ID``, ``_SECRET_ACCESS_KEY``,
``_SESSION_TOKEN``) are known here: credentials that boto3's chain finds (environment, profiles, roles)
are botocore's, and its wire trace shows them as it does for any client. The filter costs nothing while
those loggers are not enabled for DEBUG: their records are then never made.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from artifactstore_core.errors import redact

__all__ = ["SecretsFilter", "SECRETS_FILTER"]

# botocore's loggers that log requests, signing input or responses; any other botocore, boto3 or s3transfer
# logger that exists when a store registers its secrets gets the filter too (a filter on a logger applies
# only to records logged on that very logger, not to those its children pass up).
_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers", "botocore.hooks", "botocore.retryhandler")
_FAMILIES = ("botocore", "boto3", "s3transfer")


class SecretsFilter(logging.Filter):
    """A :class:`logging.Filter` that masks the registered secrets in a record's message (it drops none).

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
        secrets = self._secrets
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted fails in the handler, as it would without us
            return True
        clean = redact(message, secrets)
        if clean != message:
            record.msg = clean
            record.args = None
        return True

    def _after_fork(self) -> None:
        # A lock held by another thread at the fork would never be released in the child.
        self._lock = threading.Lock()


#: The one filter of this process, shared by every store.
SECRETS_FILTER = SecretsFilter()

if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=SECRETS_FILTER._after_fork)
