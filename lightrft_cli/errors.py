"""How the CLI reports a user error: a red message on stderr and exit status 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from lightrft_core.config import ConfigError
from lightrft_core.plugins import PluginLoadError
from lightrft_core.registry import UnknownComponentError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

USER_ERRORS = (ConfigError, PluginLoadError, UnknownComponentError, FileExistsError)


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", markup=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn configuration and plugin errors into a clear message and exit status 2."""
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
