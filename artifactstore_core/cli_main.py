"""The entry point of the ``artifactstore`` console script, importable before anything heavy.

The command's modules (click, rich, pydantic, the core, then the plugins) take the better part of a second
to import, and a Ctrl-C in that time stopped the import with a traceback. This module imports nothing but
:mod:`sys`, and the package's ``__init__`` (which the console script runs first) imports nothing at all (it
imports its names lazily), so :func:`main` is running, ready to turn Ctrl-C into the documented ``aborted`` and
:data:`INTERRUPTED_EXIT_CODE`, before those imports begin. Only the interpreter's own start-up and the lookup
of this package come before it.
"""

# No `from __future__ import annotations`: it imports the module __future__, before main() can catch Ctrl-C.
import sys

__all__ = ["INTERRUPTED_EXIT_CODE", "main"]

#: Exit code after Ctrl-C (SIGINT): 128 + SIGINT, what the shell reports for a command it interrupted.
INTERRUPTED_EXIT_CODE = 130


def main() -> int:
    """Import the command line and run it (:func:`artifactstore_core.cli.main`); return its exit code.

    Raises nothing for Ctrl-C, during the imports included: ``aborted`` on stderr and
    :data:`INTERRUPTED_EXIT_CODE` instead.
    """
    try:
        from .cli import main as run

        # Inside the try too: a Ctrl-C between the end of the import and run()'s own handling.
        return run()
    except KeyboardInterrupt:
        try:
            # Not rich's console, which may be what was being imported.
            sys.stderr.write("aborted\n")
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):  # no stderr (`2>&-`), or one that cannot be written
            pass
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
