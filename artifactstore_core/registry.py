"""Discovery and loading of backend plugins, behind one typed facade.

Entry points in the group ``artifactstore_core.backends`` are read without importing anything; a plugin
module is imported only when its backend is needed, one entry point at a time, so a plugin that fails to
import never breaks the others. Nobody outside this module touches the pluggy plugin manager.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._wording import with_article
from .errors import BackendNotFoundError, ConfigurationError, PluginLoadError
from .models import Capabilities
from .settings import environment_value

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from .store import ArtifactStore
    from .wiring import StoreContext

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_BACKENDS",
    "PLUGINS_ENV",
    "BackendInfo",
    "BackendSpec",
    "PluginHost",
    "plugin_host",
]

#: The entry-point group backends register in; the entry point's name is the backend name.
ENTRY_POINT_GROUP = "artifactstore_core.backends"
#: Comma-separated allow-list of backend names to load; unset or empty loads any installed backend.
PLUGINS_ENV = "ARTIFACT_STORE_PLUGINS"
#: First-party backends and the distribution that provides each.
KNOWN_BACKENDS: dict[str, str] = {
    "memory": "artifactstore-memory",
    "filesystem": "artifactstore-filesystem",
    "redis": "artifactstore-redis",
    "s3": "artifactstore-s3",
    "http": "artifactstore-http",
}

#: What a plugin's import or hook may raise and still be only that plugin's failure. ``SystemExit`` too: a
#: module that calls ``sys.exit()`` when a dependency is missing, or parses ``sys.argv`` at import, must not
#: end the program that merely lists or loads another backend. ``KeyboardInterrupt`` still stops everything.
_PLUGIN_FAILURES = (Exception, SystemExit)


@dataclass(frozen=True)
class BackendSpec:
    """What a plugin registers for one backend.

    Attributes:
        name: the backend name users select (``ARTIFACT_STORE_BACKEND``); equal to the entry point's name.
        factory: builds a store from a :class:`~artifactstore_core.wiring.StoreContext`.
        settings_model: the backend's pydantic-settings model (prefix ``ARTIFACT_STORE_<NAME>_``), if any.
        capabilities: what the backend offers.
        description: one line for listings.
    """

    name: str
    factory: Callable[[StoreContext], ArtifactStore]
    settings_model: type[BaseSettings] | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)
    description: str = ""


@dataclass(frozen=True)
class BackendInfo:
    """One discovered backend, for listings: never raises, a failure is reported in ``error``.

    ``commands_error`` says why the plugin's ``artifactstore_register_commands`` hook failed (its backend
    still works; only its commands are missing), once :meth:`PluginHost.call_commands_hook` has run.
    """

    name: str
    distribution: str
    version: str
    entry_point: str
    spec: BackendSpec | None = None
    error: str | None = None
    commands_error: str | None = None

    @property
    def status(self) -> str:
        """``"loaded"``, the load error in one line, or ``"loaded; commands failed: ..."``."""
        if self.error is not None:
            return self.error
        return "loaded" if self.commands_error is None else f"loaded; commands failed: {self.commands_error}"


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("unknown", "unknown")
    return (dist.metadata["Name"] or "unknown", dist.version or "unknown")


class PluginHost:
    """The typed facade over discovery, the pluggy plugin manager and the backend registry.

    Args:
        entry_points: a function returning the entry points to consider (tests inject their own);
            by default those of :data:`ENTRY_POINT_GROUP` in the installed distributions.
    """

    def __init__(self, entry_points: Callable[[], list[metadata.EntryPoint]] | None = None) -> None:
        self._entry_points = entry_points or (lambda: list(metadata.entry_points(group=ENTRY_POINT_GROUP)))
        self._lock = threading.RLock()
        self._specs: dict[str, BackendSpec] = {}
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._modules: dict[str, ModuleType] = {}
        # By entry-point value: what its artifactstore_register_backends registered and returned, once it ran
        # without raising. A module providing several backends (one entry point each) is asked once, as the
        # hook's contract says, not once per backend loaded.
        self._registrations: dict[str, tuple[list[object], object]] = {}
        # By entry-point value (the name each plugin module is registered under in pluggy): where it came
        # from, for messages, and why its commands hook failed.
        self._origins: dict[str, str] = {}
        self._command_errors: dict[str, str] = {}
        # Command name -> entry-point value of the plugin that registered it: a plugin may re-register its
        # own commands, never replace a core command or another plugin's.
        self._command_owners: dict[str, str] = {}

    # -- discovery ------------------------------------------------------------------------------------

    def _candidates(self) -> dict[str, list[metadata.EntryPoint]]:
        found: dict[str, list[metadata.EntryPoint]] = {}
        for ep in self._entry_points():
            claims = found.setdefault(ep.name, [])
            # The same distribution seen twice on sys.path is one claim, not a conflict.
            if all(_dist_of(other) != _dist_of(ep) or other.value != ep.value for other in claims):
                claims.append(ep)
        return found

    def _allowed(self) -> set[str] | None:
        """The allow-list of :data:`PLUGINS_ENV`, or ``None`` when it is unset or empty (every backend may load).

        Raises:
            ConfigurationError: the variable holds commas but no name (``,``): what a template leaves when
                the names it was to fill in are missing. Read as an empty list it excluded every backend,
                with an error quoting ``ARTIFACT_STORE_PLUGINS=``; read as unset it would silently lift a
                restriction the user meant to set.
        """
        raw = (environment_value(PLUGINS_ENV) or "").strip()
        if not raw:
            return None
        names = {name.strip() for name in raw.split(",") if name.strip()}
        if not names:
            raise ConfigurationError(
                f"{PLUGINS_ENV} is set but names no backend (only commas and spaces); list the backends "
                "that may load, e.g. memory,redis, or unset it to allow every installed backend"
            )
        return names

    def unmatched_allowed(self) -> list[str]:
        """Names in the allow-list of :data:`PLUGINS_ENV` that no installed plugin claims, sorted: a misspelt
        name there (``filesytem``) excludes the backend meant, which then seems not installed. ``[]`` when the
        list is unset.

        Raises:
            ConfigurationError: as :meth:`names` (the variable holds only commas).
        """
        allowed = self._allowed()
        if allowed is None:
            return []
        return sorted(allowed - set(self._candidates()))

    def installed(self) -> list[str]:
        """Names of every installed backend, whether or not the allow-list permits it (nothing is imported)."""
        return sorted(self._candidates())

    def names(self) -> list[str]:
        """Names of the installed backends the allow-list permits (nothing is imported)."""
        allowed = self._allowed()
        return sorted(name for name in self._candidates() if allowed is None or name in allowed)

    # -- loading --------------------------------------------------------------------------------------

    def load(self, name: str) -> BackendSpec:
        """Load (once) and return the spec of backend ``name``.

        Raises:
            BackendNotFoundError: no such backend is installed, or the allow-list excludes it.
            PluginLoadError: the plugin failed to import or to register, or two distributions claim the name.
        """
        with self._lock:
            if name in self._specs:
                return self._specs[name]
            candidates = self._candidates()
            allowed = self._allowed()
            # A name no plugin claims is reported as not installed, with its "did you mean", even when the
            # allow-list leaves it out: "add 'MEMORY' to ARTIFACT_STORE_PLUGINS" would send the user to list
            # a name that still would not load.
            if allowed is not None and name not in allowed and name in candidates:
                raise BackendNotFoundError(
                    f"backend {name!r} is not in {PLUGINS_ENV}={','.join(sorted(allowed))}; add it to load it",
                    backend=name,
                )
            claims = candidates.get(name)
            if not claims:
                raise self._not_found(name, sorted(n for n in candidates if allowed is None or n in allowed))
            if len(claims) > 1:
                owners = " and ".join(f"{d} {v}" for d, v in map(_dist_of, claims))
                raise PluginLoadError(
                    f"backend {name!r} is claimed by more than one distribution: {owners}; uninstall one",
                    backend=name,
                )
            spec = self._load_entry_point(name, claims[0])
            self._specs[name] = spec
            return spec

    def _load_entry_point(self, name: str, ep: metadata.EntryPoint) -> BackendSpec:
        dist, version = _dist_of(ep)
        where = f"entry point {ep.name!r} = {ep.value!r} of {dist} {version}"
        self._origins.setdefault(ep.value, where)
        try:
            plugin = ep.load()
        except _PLUGIN_FAILURES as exc:
            raise PluginLoadError(
                f"backend {name!r} failed to load ({where}): {type(exc).__name__}: {exc}", backend=name
            ) from exc
        # Typed ``object``: a plugin may pass register() anything, and what it passed is checked below.
        registered: list[object]
        cached = self._registrations.get(ep.value)
        if cached is not None:
            registered, returned = cached
        else:
            registered = []
            try:
                if ep.value not in self._modules:
                    self._pm.register(plugin, name=ep.value)
                    self._modules[ep.value] = plugin
                # Ask only this plugin, so loading one backend never runs another plugin's code.
                returned = self._hook_of("artifactstore_register_backends", ep.value)(register=registered.append)
            except _PLUGIN_FAILURES as exc:
                raise PluginLoadError(
                    f"backend {name!r} failed to register ({where}): {type(exc).__name__}: {exc}", backend=name
                ) from exc
            self._registrations[ep.value] = (registered, returned)
        specs: list[BackendSpec] = []
        for spec in registered:
            # Checked here, not on first use: a dict or a store class passed to register() would otherwise
            # raise an AttributeError from the core, which no listing or command catches.
            if not isinstance(spec, BackendSpec):
                raise PluginLoadError(
                    f"backend {name!r} is broken ({where}): its artifactstore_register_backends passed "
                    f"register() {with_article(type(spec).__name__)}, not an artifactstore_core.BackendSpec",
                    backend=name,
                )
            specs.append(spec)
        for spec in specs:
            if spec.name == name:
                _check_spec(spec, where)
                return spec
        offered = ", ".join(repr(spec.name) for spec in specs) or "nothing"
        # A spec's name must be the entry point's: the name users select is what the installer recorded.
        why = (
            "; a BackendSpec's name must equal its entry point's name"
            if specs
            else _why_nothing(plugin, returned, ep.value)
        )
        raise PluginLoadError(f"{where} registered {offered}, not backend {name!r}{why}", backend=name)

    def _hook_of(self, hook: str, key: str) -> Any:
        """A caller of ``hook`` that asks only the plugin registered under ``key`` (its entry-point value)."""
        return self._pm.subset_hook_caller(
            hook, remove_plugins=[p for other, p in self._modules.items() if other != key]
        )

    def origin(self, name: str) -> str:
        """The distribution and version that provide backend ``name`` (``"name version"``), for messages.

        Reads installed metadata only (nothing is imported); ``"unknown distribution"`` when no entry
        point claims ``name``. Raises nothing.
        """
        try:
            claims = self._candidates().get(name)
        except Exception:  # broken installed metadata: the message this is for must still be raised
            claims = None
        if not claims:
            return "unknown distribution"
        return " and ".join(f"{dist} {version}" for dist, version in map(_dist_of, claims))

    def _not_found(self, name: str, installed: list[str]) -> BackendNotFoundError:
        parts = [f"no backend named {name!r} is installed"]
        if name in KNOWN_BACKENDS:
            parts.append(f"install it with: pip install {KNOWN_BACKENDS[name]}")
        else:
            # Compared case-folded: backend names are case-sensitive (entry point names, lower-case for every
            # first-party one), and "MEMORY" is too unlike "memory" for difflib to suggest it.
            by_folded = {known.casefold(): known for known in sorted(KNOWN_BACKENDS)}
            by_folded.update((known.casefold(), known) for known in sorted(installed, reverse=True))
            close = difflib.get_close_matches(name.casefold(), sorted(by_folded), n=1, cutoff=0.6)
            if close:
                parts.append(f"did you mean {by_folded[close[0]]!r}?")
        parts.append(f"installed backends: {', '.join(installed) or 'none'}")
        return BackendNotFoundError("; ".join(parts), backend=name)

    # -- listing --------------------------------------------------------------------------------------

    def backends(self) -> list[BackendInfo]:
        """Every discovered backend with its status, loading each one (never raises for a broken plugin).

        A name more than one distribution claims cannot be loaded: it has one row per claimant, each with
        the same error."""
        infos = []
        allowed = self._allowed()
        for name, claims in sorted(self._candidates().items()):
            dist, version = _dist_of(claims[0])
            if allowed is not None and name not in allowed:
                infos.append(BackendInfo(name, dist, version, claims[0].value, error=f"not in {PLUGINS_ENV}"))
                continue
            try:
                spec = self.load(name)
            except (PluginLoadError, BackendNotFoundError) as exc:
                error = " ".join(exc.message.split())
                # A name claimed twice: a row for each claimant, so that the listing shows (and a grep for
                # either distribution finds) both, not the first one alone.
                for claim in claims:
                    infos.append(BackendInfo(name, *_dist_of(claim), claim.value, error=error))
            else:
                commands_error = self._command_errors.get(claims[0].value)
                infos.append(
                    BackendInfo(name, dist, version, claims[0].value, spec=spec, commands_error=commands_error)
                )
        return infos

    def call_commands_hook(self, cli: Any) -> list[str]:
        """Run ``artifactstore_register_commands`` on every loadable plugin, one plugin at a time.

        A plugin whose hook raises loses only its own commands (any it added before raising are removed
        again from ``cli.commands``); the others' commands are registered all the same. A command a plugin
        registers under a name already taken (a core command such as ``get``, or another plugin's) is
        dropped and the existing one kept: a plugin must never silently change what a command the user
        knows does. Either failure is reported like a load failure: in the returned lines and in
        :meth:`backends` (``commands_error``).

        Returns:
            One line per plugin that failed to load or whose hook raised. Raises nothing for a broken plugin.
        """
        problems = []
        for info in self.backends():
            if info.error is not None:
                problems.append(f"{info.name}: {info.error}")
        with self._lock:
            for impl in self._pm.hook.artifactstore_register_commands.get_hookimpls():
                key = impl.plugin_name
                # Ask only this plugin, as loading does: a hook that raises cannot keep the rest from running.
                caller = self._hook_of("artifactstore_register_commands", key)
                commands = getattr(cli, "commands", None)
                before = dict(commands) if isinstance(commands, dict) else None
                error: str | None = None
                try:
                    caller(cli=cli)
                except _PLUGIN_FAILURES as exc:
                    if before is not None and isinstance(commands, dict):
                        commands.clear()
                        commands.update(before)
                    error = " ".join(f"{type(exc).__name__}: {exc}".split())
                else:
                    error = self._keep_existing_commands(key, commands, before)
                where = self._origins.get(key, repr(key))
                if error is None:
                    self._command_errors.pop(key, None)
                else:
                    self._command_errors[key] = error
                    problems.append(f"{where}: artifactstore_register_commands failed: {error}")
        return problems

    def _keep_existing_commands(self, key: str, commands: Any, before: dict[str, Any] | None) -> str | None:
        """Put back every command of ``before`` that plugin ``key``'s hook replaced; say which, or ``None``.

        A plugin may replace only a command it registered itself (its hook runs again when ``main`` runs
        again in one process); the names it registered are remembered as its own.
        """
        if before is None or not isinstance(commands, dict):
            return None
        replaced = sorted(
            name
            for name, command in before.items()
            if commands.get(name) is not command and self._command_owners.get(name) != key
        )
        for name in replaced:
            commands[name] = before[name]
        for name, command in commands.items():
            if before.get(name) is not command:
                self._command_owners[name] = key
        if not replaced:
            return None
        names = ", ".join(repr(name) for name in replaced)
        return f"tried to replace the existing command(s) {names}; kept the existing one(s)"


def _check_spec(spec: BackendSpec, where: str) -> None:
    """Refuse a spec whose fields the core cannot use, naming the field: a ``factory=None`` or a settings
    instance where its class belongs would otherwise fail later, far from the plugin, as a bare error.

    Raises:
        PluginLoadError: ``factory`` is not callable, ``settings_model`` is not a pydantic-settings class,
            or ``capabilities`` is not a :class:`~artifactstore_core.Capabilities`.
    """
    from pydantic_settings import BaseSettings  # the registry imports nothing heavy at module level

    # Typed object: the annotations are what a plugin should pass, not what it did.
    factory: object = spec.factory
    model: object = spec.settings_model
    capabilities: object = spec.capabilities
    problem = None
    if not callable(factory):
        problem = f"its factory is {with_article(type(factory).__name__)}, not a callable"
    elif model is not None and not (isinstance(model, type) and issubclass(model, BaseSettings)):
        problem = f"its settings_model is {with_article(type(model).__name__)}, not a BackendSettings subclass"
    elif model is not None and (why := _settings_problem(spec.name, model)):
        problem = why
    elif not isinstance(capabilities, Capabilities):
        kind = with_article(type(capabilities).__name__)
        problem = f"its capabilities are {kind}, not an artifactstore_core.Capabilities"
    if problem is not None:
        raise PluginLoadError(f"backend {spec.name!r} is broken ({where}): {problem}", backend=spec.name)


def _settings_problem(name: str, model: type[Any]) -> str | None:
    """What is wrong with a backend's settings model, or ``None``.

    Without its own ``env_prefix`` a model reads unprefixed variables: a field ``path`` would silently
    take the shell's ``PATH``. Without a ``config_table`` a ``BackendSettings`` model reads the config
    file's top level, the core's, and refuses the core's own keys (``backend``) as unknown settings: an
    error that blames the user's file for the plugin's omission.
    """
    from .settings import BackendSettings  # pydantic-settings is imported only when a plugin is loaded

    suggested = "ARTIFACT_STORE_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_"
    prefix = str(model.model_config.get("env_prefix") or "")
    if not prefix.upper().startswith("ARTIFACT_STORE_") or prefix.upper() == "ARTIFACT_STORE_":
        return (
            f"its settings_model {model.__name__} has env_prefix {prefix!r}, so it would read other programs' "
            f"variables; set model_config = SettingsConfigDict(env_prefix={suggested!r})"
        )
    if issubclass(model, BackendSettings) and not model.config_table:
        return (
            f"its settings_model {model.__name__} sets no config_table, so it would read the config file's "
            f"top level (the core's settings); set config_table = {name!r}"
        )
    return None


def _why_nothing(plugin: object, returned: object, value: str) -> str:
    """Why a plugin registered nothing, for the message: the mistakes a plugin author actually makes.

    ``value`` is the entry point's value (``module`` or ``module:attribute``).
    """
    if isinstance(returned, list) and returned:
        kind = with_article(type(returned[0]).__name__)
        return (
            f": its artifactstore_register_backends returned {kind}; call register(spec) with each "
            "BackendSpec instead of returning it"
        )
    hook = getattr(plugin, "artifactstore_register_backends", None)
    if hook is not None and not hasattr(hook, f"{hookspecs.PROJECT_NAME}_impl"):
        return ": its artifactstore_register_backends is not decorated with @artifactstore_core.hookimpl"
    if hook is None and not isinstance(plugin, ModuleType):
        # "module:attribute", pointing at the store class or at the hook function itself: what was loaded
        # is that object, which has no hook of its own (a module, or an object holding the hook, does).
        module = value.partition(":")[0].strip()
        if _is_hook(plugin):
            what = "the hook function itself"
        elif isinstance(plugin, type):
            what = f"the class {plugin.__name__}"
        else:
            what = f"a {type(plugin).__name__} object"
        return (
            f": the entry point names {what}, not the module that defines the hook; "
            f"make its value the module: {module!r}"
        )
    if hook is None:
        names = sorted(n for n in dir(plugin) if n.startswith("artifactstore_") and callable(getattr(plugin, n)))
        close = difflib.get_close_matches("artifactstore_register_backends", names, n=1, cutoff=0.8)
        guess = f" (found {close[0]!r}: a misspelling?)" if close else ""
        return f": the module defines no artifactstore_register_backends hook{guess}"
    return ": its artifactstore_register_backends never called register()"


def _is_hook(plugin: object) -> bool:
    """Whether ``plugin`` is an ``artifactstore_register_backends`` function decorated as a hook."""
    return getattr(plugin, "__name__", None) == "artifactstore_register_backends" and hasattr(
        plugin, f"{hookspecs.PROJECT_NAME}_impl"
    )


_host: PluginHost | None = None
_host_lock = threading.Lock()


def plugin_host() -> PluginHost:
    """The process-wide :class:`PluginHost` (created on first use)."""
    global _host
    with _host_lock:
        if _host is None:
            _host = PluginHost()
        return _host


def reset_plugin_host() -> None:
    """Forget loaded plugins and rediscover on next use (for tests and long-lived hosts after installs)."""
    global _host
    with _host_lock:
        _host = None
