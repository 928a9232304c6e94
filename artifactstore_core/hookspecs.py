"""The hooks a plugin implements. This module is the plugin author's contract.

A plugin is a module named by an entry point in the group ``artifactstore_core.backends``; the entry
point's name is the backend name. The module implements hooks with the :data:`hookimpl` marker::

    from artifactstore_core import BackendSpec, hookimpl

    @hookimpl
    def artifactstore_register_backends(register):
        register(BackendSpec(name="mine", factory=make_store, settings_model=MySettings,
                             capabilities=MyStore.capabilities))

Hooks only *register*: store operations are plain method calls on the chosen backend's
:class:`~artifactstore_core.ArtifactStore`, never hooks fanned out over every plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .registry import BackendSpec

__all__ = ["PROJECT_NAME", "hookimpl"]

#: The pluggy project name of artifactstore.
PROJECT_NAME = "artifactstore"

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations in plugins.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@_hookspec
def artifactstore_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register the backends this plugin provides.

    Called once per plugin, right after its entry point is loaded, when its backend (the first of them, for
    a module that several entry points name) is first needed (a store is created, or backends are listed);
    called again only if it raised.

    Args:
        register: call it with one :class:`~artifactstore_core.BackendSpec` per backend. The spec's name
            must equal the entry point's name.

    Returns:
        Nothing.
    """


@_hookspec
def artifactstore_register_commands(cli: Any) -> None:
    """Add subcommands to the ``artifactstore`` command-line tool.

    Called when the CLI starts, for every loadable plugin, one plugin at a time: if it raises, that
    plugin's commands (any it added) are dropped, the others' are kept, and ``artifactstore backends``
    shows the error in its status. A command added under a name already taken (a core command such as
    ``get``, or another plugin's) is dropped and the existing one kept, reported the same way.

    Args:
        cli: the CLI's root command group; add commands to it.

    Returns:
        Nothing.
    """
