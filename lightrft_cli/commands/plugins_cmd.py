"""``lightrft plugins``: what is installed and what each plugin provides."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightrft_core.plugins import get_plugin_manager

from ..errors import user_errors

_STATUS_STYLE = {"ok": "green", "broken": "bold red", "disabled": "dim"}


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    plugin: list[str] = typer.Option(
        [], "--plugin", "-p", help="Also load this plugin (entry point, module or .py file)."
    ),
) -> None:
    """List installed plugins: name, version, distribution, hooks, components, status."""
    manager = get_plugin_manager()
    with user_errors():
        for spec in plugin:
            manager.load_plugin(spec)
    infos = manager.plugins()
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    table = Table(title="LightRFT plugins", show_lines=True)
    for column in ("name", "version", "distribution", "status", "components", "hooks"):
        table.add_column(column, no_wrap=column in ("name", "version", "components"))
    for info in infos:
        style = _STATUS_STYLE.get(info.status, "")
        status = f"[{style}]{info.status}[/]"
        if info.error:
            status += f"\n{escape(info.error)}"
        table.add_row(
            escape(info.name),
            escape(info.version or "-"),
            escape(info.distribution or info.source),
            status,
            escape("\n".join(info.components) or "-"),
            "\n".join(_short_hook(h) for h in info.hooks) or "-",
        )
    Console(soft_wrap=False).print(table)


def _short_hook(hook: str) -> str:
    return hook.removeprefix("lightrft_").removeprefix("register_")
