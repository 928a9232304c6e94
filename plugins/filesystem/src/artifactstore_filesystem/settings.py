"""Settings of the filesystem backend (prefix ``ARTIFACT_STORE_FILESYSTEM_``, config table ``filesystem``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from artifactstore_core import BackendSettings, ConfigurationError

__all__ = ["FilesystemSettings", "default_root"]

# The largest chunk_size (64 MiB): a streaming save holds a few chunks in memory at once.
_MAX_CHUNK_SIZE = 64 * 1024 * 1024


def default_root() -> Path:
    """The per-user data directory artifacts live in when ``ARTIFACT_STORE_FILESYSTEM_ROOT`` is not set.

    ``$XDG_DATA_HOME/artifactstore`` (default ``~/.local/share/artifactstore``) on Linux and other Unixes,
    ``~/Library/Application Support/artifactstore`` on macOS, ``%LOCALAPPDATA%\\artifactstore`` on Windows.

    Raises:
        ConfigurationError: the home directory it depends on cannot be found (``HOME`` unset and the user
            not in the password database, as for a service or container running under an arbitrary uid).
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(_home() / "AppData" / "Local")
        return Path(base) / "artifactstore"
    if sys.platform == "darwin":
        return _home() / "Library" / "Application Support" / "artifactstore"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else _home() / ".local" / "share"
    return base / "artifactstore"


def _home() -> Path:
    try:
        return Path.home()
    except (RuntimeError, KeyError, OSError) as exc:
        # Path.home() raises a bare RuntimeError here, which would escape create_store() and the CLI raw.
        raise ConfigurationError(
            "the default ARTIFACT_STORE_FILESYSTEM_ROOT is under the home directory, which cannot be found "
            "(HOME is unset and the user has no password entry); set ARTIFACT_STORE_FILESYSTEM_ROOT to a "
            "directory, or set HOME"
        ) from exc


class FilesystemSettings(BackendSettings):
    """Settings of the filesystem backend (prefix ``ARTIFACT_STORE_FILESYSTEM_``)."""

    model_config = SettingsConfigDict(env_prefix="ARTIFACT_STORE_FILESYSTEM_", extra="ignore")
    config_table = "filesystem"

    root: Path = Field(
        default_factory=default_root,
        description="Directory that holds every namespace's artifacts (created on first write; '~' is "
        "expanded; empty is refused). Default: the per-user data directory, e.g. ~/.local/share/artifactstore "
        "on Linux.",
    )
    fsync: bool = Field(
        default=True,
        description="Flush every write to stable storage (file and directory fsync) before a save returns. "
        "Turning it off keeps writes atomic and crash-safe for the process, but a power loss may lose "
        "recently saved artifacts.",
    )
    temp_max_age: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds after which a temporary file left by a killed writer is swept (when a store is "
        "opened and on clear). Must exceed the longest pause inside one write, e.g. a slow streaming source.",
    )
    chunk_size: int = Field(
        default=1024 * 1024,
        ge=4096,
        # Each chunk is a buffer in memory (a streaming save holds a few at once): unbounded, a mistyped value
        # made the first streaming save fail on a MemoryError instead of the setting being refused.
        le=_MAX_CHUNK_SIZE,
        description="Bytes read or written per call when streaming (save_stream, open, copies); 4096 to "
        "67108864 (64 MiB).",
    )

    @field_validator("root", mode="before")
    @classmethod
    def _refuse_empty(cls, value: object) -> object:
        # An empty value is what `ROOT=$UNSET_VARIABLE` or a deployment template with a missing value leaves;
        # as a Path it is ".", so every process would keep its artifacts in its own working directory, and
        # processes started in different directories would silently not share them.
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "is set but empty (or only whitespace); set a directory ('.' for the working directory), "
                "or unset the variable for the default per-user data directory"
            )
        return value

    @field_validator("root")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()
