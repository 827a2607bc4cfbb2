"""``lightrft plugin new``: start a third-party plugin package."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import fail
from ..scaffold import KINDS, new_plugin

app = typer.Typer(no_args_is_help=True)


@app.command("new")
def new(
    name: str = typer.Argument(..., help="Plugin name, e.g. my-algo (entry point and component)."),
    kind: str = typer.Option(
        "algorithm", "--kind", "-k", help=f"Component to start from: {', '.join(KINDS)}."
    ),
    directory: Path = typer.Option(
        Path("."), "--directory", "-d", file_okay=False, help="Where to create the package."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing folder."),
) -> None:
    """Write a complete, installable plugin package (with passing tests) to start from."""
    try:
        root = new_plugin(name, kind, directory, force=force)
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"created {root}")
    typer.echo(f"next: pip install -e {root} && pytest {root} && lightrft plugins")
