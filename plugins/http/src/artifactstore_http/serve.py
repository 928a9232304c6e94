"""Running the artifact server under uvicorn: :func:`serve`, the ``serve`` command and ``artifactstore-serve``.

Needs the server extra: ``pip install "artifactstore-http[server]"``.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from typing import Any

from artifactstore_core.errors import AccessDeniedError, ArtifactStoreError, ConfigurationError
from artifactstore_core.settings import CoreSettings, load_settings

from .settings import ServerSettings, is_loopback

__all__ = ["build_app", "main", "serve", "serve_command"]

logger = logging.getLogger("artifactstore_http.server")

_INSTALL = 'the artifact server needs its extra: pip install "artifactstore-http[server]"'


def build_app(settings: ServerSettings) -> Any:
    """The server application for ``settings``: the configured backend, token and limits.

    Raises:
        ConfigurationError: the settings are inconsistent (no token and not insecure) or the extra is missing.
        BackendNotFoundError, PluginLoadError: the backend to serve is not installed or fails to load.
    """
    try:
        from .server import create_app, default_store_factory
    except ImportError as exc:
        raise ConfigurationError(_INSTALL) from exc
    return create_app(
        default_store_factory(settings.backend),
        token=settings.token,
        insecure=settings.insecure,
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        max_header_count=settings.max_header_count,
        max_header_bytes=settings.max_header_bytes,
        store_cache_size=settings.store_cache_size,
        path_prefix=settings.path_prefix,
    )


def serve(
    host: str | None = None,
    port: int | None = None,
    *,
    insecure: bool | None = None,
    backend: str | None = None,
    max_body_bytes: int | None = None,
    max_json_bytes: int | None = None,
    path_prefix: str | None = None,
    log_level: str | None = None,
    shutdown_timeout: float | None = None,
    fd: int | None = None,
) -> None:
    """Run the artifact server until stopped: SIGTERM, SIGHUP and SIGINT (Ctrl-C) all stop it gracefully (the
    requests in flight get ``shutdown_timeout`` seconds). After SIGTERM, the way a service manager (systemd,
    Kubernetes) stops a server, and after SIGHUP (the terminal closed, the shell that started it exited), it
    returns; after SIGINT it raises ``KeyboardInterrupt``, as an interrupted program does (unless SIGINT was
    ignored when it started: then it returns too). A SIGHUP ignored when it started (``nohup``) stays ignored.

    Arguments override :class:`ServerSettings` (``ARTIFACT_STORE_SERVER_*``, then the ``[server]`` table of
    the config file); the token is read only from ``ARTIFACT_STORE_SERVER_TOKEN`` or the config file, never
    from an argument that would show in a process listing. Binds 127.0.0.1:8765 unless told otherwise.

    Args:
        shutdown_timeout: seconds the requests in flight get to finish after SIGINT, SIGTERM or SIGHUP.
        fd: serve on this already-bound listening socket instead of ``host``/``port`` (socket activation).

    Raises:
        ConfigurationError: invalid settings (a log level other than debug, info, warning, error or
            critical, a negative shutdown timeout), no token without ``insecure``, ``fd`` not an open stream socket,
            the server extra missing, or ``host``:``port`` cannot be listened on (in use, not an address of this
            machine).
        AccessDeniedError: listening on ``port`` is not permitted (below 1024 without the privilege).
        BackendNotFoundError, PluginLoadError: the backend to serve is not installed or fails to load (the
            server does not start).
        ArtifactStoreError: uvicorn's own startup failed (the application's lifespan startup); uvicorn logged
            why. Nothing was served.
        KeyboardInterrupt: stopped by SIGINT (Ctrl-C), after the graceful shutdown.
    """
    settings = load_settings(
        ServerSettings,
        host=host,
        port=port,
        insecure=insecure,
        backend=backend,
        max_body_bytes=max_body_bytes,
        max_json_bytes=max_json_bytes,
        path_prefix=path_prefix,
        log_level=log_level,
        shutdown_timeout=shutdown_timeout,
    )
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigurationError(_INSTALL) from exc
    app = build_app(settings)
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(level)
    if fd is None and not is_loopback(settings.host):
        if settings.token is None:
            logger.warning(
                "serving WITHOUT AUTHENTICATION on %s: anyone who can reach it can read and write", settings.host
            )
        logger.warning("listening on %s beyond loopback: put a TLS-terminating reverse proxy in front", settings.host)
    if fd is not None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigurationError(f"--fd {fd} is not an open socket ({exc.strerror or exc})") from exc
        if sock.type != socket.SOCK_STREAM:
            # A datagram socket (a unit's ListenDatagram=) failed uvicorn's startup with a ValueError traceback.
            sock.detach()  # the descriptor stays the caller's, as for any other refused --fd
            raise ConfigurationError(f"--fd {fd} is not a stream socket (TCP or Unix stream): HTTP needs one")
    else:
        # Bound here, not by uvicorn: uvicorn logs a failed bind and exits with its own status 3, which the
        # artifactstore CLI documents as "artifact not found", and names no setting.
        sock = _listen(settings.host, settings.port)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Connections inherit it. asyncio sets it only on sockets it created itself; without it each
        # response on a kept-alive connection can wait ~40 ms for a delayed ACK (Nagle's algorithm).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # uvicorn names the address only for sockets it binds itself: without this line an operator saw
    # "Application startup complete" and not where (the port chosen for --port 0, the prefix) or what it serves.
    logger.info(
        "serving the %s backend at %s (%s)",
        settings.backend or load_settings(CoreSettings).backend,
        _address(sock, settings.path_prefix.rstrip("/")),
        "bearer token required" if settings.token is not None else "WITHOUT AUTHENTICATION",
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # h11, whatever else is installed: its limit on the request line plus headers is ours to set.
        http="h11",
        ws="none",
        lifespan="on",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # uvicorn's access log prints query strings; the app logs requests without them.
        access_log=False,
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=settings.log_level.lower(),
        # Annotated int by uvicorn, which hands it to asyncio.wait_for: any number of seconds works.
        timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)

    def stop(signum: int, _frame: object) -> None:
        # SIGTERM: before uvicorn takes it over (during its startup), and once more after its graceful shutdown:
        # it re-raises the signal it caught to the handler it found, this one, so that the process does not end
        # by SIGTERM (the CLI's "aborted", status 143) but returns, stopped as asked. SIGHUP, which uvicorn does
        # not handle, all along: what uvicorn's own handler does for SIGTERM, a graceful shutdown.
        server.should_exit = True

    previous: dict[int, Any] = {}
    try:
        for signum in _STOP_SIGNALS:
            if signum != signal.SIGTERM and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # started by nohup, to outlive its terminal: a hang-up stays ignored
            previous[signum] = signal.signal(signum, stop)
    except ValueError:  # not the main thread: no handler can be set (nor does uvicorn set one)
        pass
    try:
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:
            # uvicorn ends a failed startup (the application's lifespan startup failed) with sys.exit(3), the
            # artifactstore CLI's "artifact not found", and the reason in its log only.
            if server.started:
                raise
            raise _startup_failed() from exc
        if not server.started:
            # Older uvicorn returns from a failed startup instead (its uvicorn.run() exits 3 then): it was
            # reported as "stopped: graceful shutdown complete", status 0.
            raise _startup_failed()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()


#: The signals that stop :func:`serve` gracefully besides SIGINT (those a platform has): a service manager's
#: stop, and a hang-up (the terminal closed, the shell that started the server exited).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _startup_failed() -> ArtifactStoreError:
    return ArtifactStoreError(
        "the artifact server failed to start: uvicorn's startup failed (the log above says why); nothing was served"
    )


def _address(sock: socket.socket, path_prefix: str) -> str:
    """Where ``sock`` is served, for the log: the base URL clients use on this machine (before any proxy)."""
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}{path_prefix}"
    if sock.family == socket.AF_INET:
        return f"http://{name[0]}:{name[1]}{path_prefix}"
    return f"{name!r} (a {sock.family.name} socket), path prefix {path_prefix or '/'}"


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, bound as uvicorn binds one (``SO_REUSEADDR``; IPv6 for a host
    with a colon).

    Raises:
        ConfigurationError: the address is in use, not an address of this machine, or not a host name that
            resolves; the message names the address and the settings that chose it.
        AccessDeniedError: binding it is not permitted (a port below 1024 without the privilege).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # (No IPV6_V6ONLY, as uvicorn: "::" takes IPv4 connections too where the system allows it.)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog; asyncio calls listen() again with it
    except OSError as exc:
        sock.close()
        raise _listen_error(exc, shown) from exc
    return sock


def _listen_error(exc: OSError, shown: str) -> ArtifactStoreError:
    if isinstance(exc, PermissionError):
        return AccessDeniedError(
            f"not permitted to listen on {shown} ({exc.strerror}): a port below 1024 needs privileges; choose "
            "another with --port or ARTIFACT_STORE_SERVER_PORT"
        )
    why = exc.strerror or type(exc).__name__
    if exc.errno == errno.EADDRINUSE:
        why += ": another process listens there (another artifact server?)"
    return ConfigurationError(
        f"cannot listen on {shown} ({why}); choose another address with --host/--port or "
        "ARTIFACT_STORE_SERVER_HOST/ARTIFACT_STORE_SERVER_PORT"
    )


def serve_command(*, standalone: bool = False) -> Any:
    """The ``serve`` command as a :class:`click.Command` (click comes with uvicorn, in the server extra).

    Args:
        standalone: print core errors as one line and exit 1 (for ``artifactstore-serve``); otherwise they
            propagate, for the ``artifactstore`` CLI to report with its documented exit codes.

    Raises:
        ImportError: click is not installed.
    """
    import click

    @click.command("serve")
    @click.option("--host", default=None, help="Address to bind [default: 127.0.0.1].")
    @click.option("--port", type=int, default=None, help="Port [default: 8765].")
    @click.option("--insecure", is_flag=True, default=False, help="Serve without authentication when no token is set.")
    @click.option("--backend", default=None, help="Backend to expose [default: ARTIFACT_STORE_BACKEND].")
    @click.option(
        "--max-body-bytes",
        type=int,
        default=None,
        # Content, not the request body: the envelope's head travels on top (docs/http.md, one limit for both
        # sides), and clients are given the same number as ARTIFACT_STORE_HTTP_MAX_BODY_BYTES.
        help="Largest artifact content (after decompression) accepted; the envelope's head comes on top "
        "[default: 268435456].",
    )
    @click.option(
        "--max-json-bytes",
        type=int,
        default=None,
        help="Largest JSON content (decoded), and envelope header, accepted [default: 33554432].",
    )
    @click.option("--path-prefix", default=None, help="Path prefix the API is served under, e.g. /artifactstore.")
    @click.option("--log-level", default=None, help="debug, info, warning, error or critical [default: info].")
    @click.option(
        "--shutdown-timeout",
        type=float,
        default=None,
        help="Seconds requests in flight get to finish after SIGINT, SIGTERM or SIGHUP [default: 30].",
    )
    @click.option("--fd", type=int, default=None, help="Serve on this inherited, bound socket descriptor.")
    def command(**options: Any) -> None:
        """Serve the configured store over HTTP (token from ARTIFACT_STORE_SERVER_TOKEN)."""
        # An absent flag must not override ARTIFACT_STORE_SERVER_INSECURE.
        options["insecure"] = options["insecure"] or None
        try:
            serve(**options)
        except ArtifactStoreError as exc:
            if not standalone:
                raise
            raise click.ClickException(f"{type(exc).__name__}: {exc.message}") from exc
        # serve() returns only once stopped as asked (SIGTERM, as a service manager stops a server; SIGHUP, a closed
        # terminal; or SIGINT where it was ignored when the server started): a graceful stop, status 0. Ctrl-C
        # raises KeyboardInterrupt, which the artifactstore CLI reports as "aborted", 130. A failed startup raises.
        click.echo("stopped: graceful shutdown complete", err=True)

    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``artifactstore-serve`` console script."""
    try:
        command = serve_command(standalone=True)
    except ImportError:
        raise SystemExit(_INSTALL) from None
    command.main(args=argv, prog_name="artifactstore-serve")
