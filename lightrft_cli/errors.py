"""How the CLI reports a user error: one red line on stderr and exit status 2.

Every message is escaped before rich prints it: a path or key holding ``[/x]`` is shown as
written instead of being read as markup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from lightrft_core.config import ConfigError
from lightrft_core.plugins import PluginLoadError
from lightrft_core.preflight import WRITE_ADVICE, describe_os_error
from lightrft_core.registry import UnknownComponentError
from lightrft_core.trainer.reward_failures import RewardFailureError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Errors that are the user's to fix (configuration, plugins, files, data).
USER_ERRORS = (
    ConfigError,
    PluginLoadError,
    UnknownComponentError,
    RewardFailureError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)
ENV_DEBUG = "LIGHTRFT_DEBUG"

#: Words of the errors torch (``torch.save``) and safetensors raise when a write fails for
#: lack of space or a file-size limit; they carry no ``errno``.
_FAILED_WRITE_WORDS = (
    "file write failed",
    "No space left on device",
    "StorageFull",
    "File too large",
    "FileTooLarge",
)
_FAILED_WRITE_ADVICE = (
    "writing a file failed (a full disk or a file-size limit); free space on the disk of "
    "run.output_dir or raise the limit (ulimit -f), then resume from the last checkpoint"
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` (plain text, escaped) as an error and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    return typer.Exit(code)


def user_message(exc: BaseException) -> str | None:
    """The message to show for ``exc`` when it is the user's to fix, else ``None``."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ADVICE:
        return describe_os_error(exc)
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, (RuntimeError, OSError)) and any(
        word in str(exc) for word in _FAILED_WRITE_WORDS
    ):
        return _FAILED_WRITE_ADVICE
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn user errors into a clear message and exit status 2 (``LIGHTRFT_DEBUG=1`` shows
    the traceback instead)."""
    try:
        yield
    except Exception as exc:
        message = user_message(exc)
        if message is None or os.environ.get(ENV_DEBUG, "") not in ("", "0"):
            raise
        raise fail(message) from None
