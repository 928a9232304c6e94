"""A hostile pickle planted in every backend's storage never runs.

The pickle creates a marker file when loaded (``test_the_planted_pickle_is_live`` proves it would). It is
planted in each backend's own storage in every shape a careless decoder might load: as the raw stored
value, as the payload of a valid envelope, behind a forged header that names a "pickle" codec or
compression, as JSON that mimics pickle-style object markers, and behind a schema name that names a
callable. Every read path (get, get_many, exists, info, list, open, to_model) then runs; the marker file
must stay absent, and each call must return plain data or raise a documented error.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envelopes import forge, header_of, hostile_pickle, split
from pydantic import BaseModel
from reliability_backends import Backend

from artifactstore_core import ArtifactStore, Message, SchemaInfo
from artifactstore_core.errors import ArtifactStoreError, SchemaMismatchError


def test_the_planted_pickle_is_live(tmp_path: Path) -> None:
    """The payload is real: loading it (which the library must never do) creates the marker."""
    marker = tmp_path / "live"
    loaded = pickle.loads(hostile_pickle(marker))  # the attack, run on purpose to prove it works
    loaded.close()
    assert marker.exists()


def plantings(marker: Path) -> dict[str, tuple[bytes, bytes]]:
    """Stored forms, as ``(head, payload)``, each carrying the hostile pickle."""
    evil = hostile_pickle(marker)
    good = header_of(split(Message(content=evil))[0])
    mimic = {"py/reduce": [{"py/function": "builtins.open"}, [str(marker), "w"]], "__reduce__": "builtins.open"}
    return {
        "pickle-as-head-and-payload": (evil, evil),
        "pickle-as-payload-only": (b"", evil),
        "pickle-in-a-valid-envelope": split(Message(content=evil, media_type="application/python-pickle")),
        "forged-pickle-codec": forge({**good, "codec": "pickle", "media_type": "application/python-pickle"}, evil),
        "forged-pickle-compression": forge({**good, "compression": "pickle"}, evil),
        "json-mimicking-pickle": split(Message(content=mimic, metadata={"py/object": "os.system"})),
        "schema-naming-a-callable": split(Message(content={"x": 1}, schema=SchemaInfo(name="builtins.open"))),
    }


def memory_plantings(marker: Path) -> dict[str, Message]:
    """The memory backend keeps objects: plant messages that carry the pickle as plain data."""
    evil = hostile_pickle(marker)
    return {
        "pickle-bytes": Message(content=evil, media_type="application/python-pickle"),
        "pickle-as-latin1-text": Message(content=evil.decode("latin-1")),
        "schema-naming-a-callable": Message(content={"x": 1}, schema=SchemaInfo(name="builtins.open")),
    }


class Target(BaseModel):
    x: int


def read_paths(store: ArtifactStore, step_id: str) -> dict[str, Callable[[], Any]]:
    def read_stream() -> bytes:
        with store.open(step_id) as stream:
            return stream.read()

    return {
        "get": lambda: store.get(step_id),
        "get_many": lambda: store.get_many([step_id]),
        "exists": lambda: store.exists(step_id),
        "info": lambda: store.info(step_id),
        "list": lambda: list(store.list()),
        "open": read_stream,
        "to_model": lambda: store.get(step_id).to_model(Target, check_name=False),
    }


@pytest.mark.timeout(120)
def test_a_planted_pickle_never_executes(backend: Backend, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    ns = f"rel-pickle-{uuid.uuid4().hex[:8]}"
    outcomes: dict[str, str] = {}
    with backend.make(ns) as store:
        if backend.plant is None:
            items = backend.extra["space"].namespace(ns)
            names = list(memory_plantings(marker))
            for name, message in memory_plantings(marker).items():
                items[name] = message
        else:
            names = list(plantings(marker))
            for name, (head, payload) in plantings(marker).items():
                backend.plant(ns, name, head, payload)
        for name in names:
            for path, call in read_paths(store, name).items():
                try:
                    result = call()
                except ArtifactStoreError as exc:
                    outcomes[f"{name}/{path}"] = type(exc).__name__
                except Exception as exc:
                    outcomes[f"{name}/{path}"] = f"RAW {type(exc).__name__}: {exc}"
                else:
                    outcomes[f"{name}/{path}"] = type(result).__name__
                assert not marker.exists(), f"the planted pickle ran: {name} via {path}"
        if backend.plant is not None:
            for name in names:
                store.delete(name)
    assert not marker.exists()
    raw = {case: outcome for case, outcome in outcomes.items() if outcome.startswith("RAW")}
    # pydantic's ValidationError for content of the wrong shape is what to_model documents; nothing else.
    raw = {case: outcome for case, outcome in raw.items() if "ValidationError" not in outcome}
    assert raw == {}, f"raw exceptions escaped: {raw}"
    # A pickle carried as plain data comes back as exactly those bytes, unloaded.
    key = "pickle-in-a-valid-envelope/get" if backend.plant is not None else "pickle-bytes/get"
    assert outcomes[key] == "Message"
    with backend.make(ns) as store:
        if backend.plant is None:
            assert store.get("pickle-bytes").content == hostile_pickle(marker)


def test_a_schema_name_is_only_ever_compared() -> None:
    """``to_model`` refuses a message whose schema names something else, without importing the name."""
    message = Message(content={"x": 1}, schema=SchemaInfo(name="os.system"))
    with pytest.raises(SchemaMismatchError):
        message.to_model(Target)
