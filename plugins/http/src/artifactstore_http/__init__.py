"""artifactstore-http: the ``http`` backend and the artifact server that shares any store over HTTP.

The client half (this module, :class:`HttpStore`) needs only httpx. The server half
(:mod:`artifactstore_http.server`, :mod:`artifactstore_http.serve`) needs the ``server`` extra
(Starlette and uvicorn) and is imported only when used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from artifactstore_core import BackendSpec, StoreContext, hookimpl

from .client import HttpStore
from .settings import HttpSettings, ServerSettings

__all__ = ["HttpSettings", "HttpStore", "ServerSettings"]


def _factory(context: StoreContext) -> HttpStore:
    settings = context.settings if isinstance(context.settings, HttpSettings) else None
    return HttpStore(settings, namespace=context.namespace, codec=context.codec)


@hookimpl
def artifactstore_register_backends(register: Callable[[BackendSpec], Any]) -> None:
    """Register the ``http`` backend."""
    register(
        BackendSpec(
            name="http",
            factory=_factory,
            settings_model=HttpSettings,
            capabilities=HttpStore.capabilities,
            description="An artifact server over HTTP (artifactstore-serve), backed by any store.",
        )
    )


@hookimpl
def artifactstore_register_commands(cli: Any) -> None:
    """Add the ``serve`` command to the CLI.

    Expects ``cli`` to be a click group (anything with ``add_command(command, name)`` taking a
    :class:`click.Command`). Does nothing when ``cli`` has no ``add_command`` or the server extra (which
    brings click with uvicorn) is not installed.
    """
    add_command = getattr(cli, "add_command", None)
    if not callable(add_command):
        return
    try:
        from .serve import serve_command

        command = serve_command()
    except ImportError:
        return
    add_command(command, "serve")
