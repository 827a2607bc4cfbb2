"""How the CLI reports a user error: a red message on stderr and exit status 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from lightrft_core.config import ConfigError
from lightrft_core.plugins import PluginLoadError
from lightrft_core.registry import UnknownComponentError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Errors that are the user's to fix (configuration, plugins, files, data).
USER_ERRORS = (
    ConfigError,
    PluginLoadError,
    UnknownComponentError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)
ENV_DEBUG = "LIGHTRFT_DEBUG"


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", markup=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn user errors into a clear message and exit status 2 (``LIGHTRFT_DEBUG=1`` shows
    the traceback instead)."""
    try:
        yield
    except USER_ERRORS as exc:
        if os.environ.get(ENV_DEBUG, "") not in ("", "0"):
            raise
        raise fail(str(exc)) from None
