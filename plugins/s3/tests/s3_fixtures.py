"""Helpers shared by the S3 tests: constants, settings, a raw boto3 client, bucket listings."""

from __future__ import annotations

import io
from typing import Any

import boto3
from botocore.config import Config

from artifactstore_core import Message
from artifactstore_s3 import S3Settings, S3Store

ACCESS_KEY = "AKIAMOTOTESTING00001"
SECRET_KEY = "moto-secret-canary-3f9c2e"  # a canary: tests assert it never appears in reprs, logs or errors
REGION = "us-east-1"


def raw_client(endpoint: str, **config: Any) -> Any:
    """A plain boto3 client with no artifactstore code, as another tool would use."""
    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    ).client(
        "s3", endpoint_url=endpoint, config=Config(retries={"mode": "standard", "total_max_attempts": 2}, **config)
    )


def make_settings(endpoint: str, bucket: str, **overrides: Any) -> S3Settings:
    values: dict[str, Any] = {
        "bucket": bucket,
        "endpoint_url": endpoint,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "max_attempts": 3,
        "connect_timeout": 5,
        "read_timeout": 30,
    }
    values.update(overrides)
    return S3Settings(**values)


def all_keys(raw: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def open_uploads(raw: Any, bucket: str) -> list[dict[str, Any]]:
    return list(raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


class _Raw:
    """The minimal raw body botocore reads from a response."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def error_response(url: str, status: int, code: str, message: str = "injected") -> Any:
    """An S3 error response, as a ``before-send`` handler returns it to short-circuit the real request."""
    from botocore.awsrequest import AWSResponse

    body = f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>r</RequestId></Error>".encode()
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse(url, status, headers, _Raw(body))


def delete_result(url: str, refused: list[tuple[str, str]]) -> Any:
    """A DeleteObjects answer (HTTP 200) that refuses the ``(key, code)`` pairs and reports the rest deleted,
    as a ``before-send`` handler returns it."""
    from botocore.awsrequest import AWSResponse

    errors = "".join(f"<Error><Key>{key}</Key><Code>{code}</Code><Message>m</Message></Error>" for key, code in refused)
    body = f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult>{errors}</DeleteResult>'.encode()
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse(url, 200, headers, _Raw(body))


class NonSeekable(io.RawIOBase):
    """A stream that cannot seek (a pipe, a socket): forces the staged streaming upload."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__()
        self._source = io.BytesIO(data)
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        if self._fail_after is not None and self._source.tell() >= self._fail_after:
            raise OSError("the producer died")
        return self._source.readinto(buffer)


def warm(store: S3Store) -> None:
    """Run both conditional-write probes (``PutObject``, then ``CompleteMultipartUpload``), then save the
    small artifact ``"warm"``: faults injected afterwards reach the operation under test, not a probe."""
    store._ensure_conditional(multipart=True)
    store.save("warm", Message(content=0))
