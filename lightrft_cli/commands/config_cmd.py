"""``lightrft config show|validate|schema``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightrft_core.config import COMPONENT_SECTIONS, dump_config, load_config_with_warnings
from lightrft_core.config.describe import (
    FieldDoc,
    core_sections,
    dataclass_fields,
    schema_markdown,
    yaml_inline,
)
from lightrft_core.plugins import get_plugin_manager

from ..errors import err_console, user_errors
from .train_cmd import OVERRIDES_ARGUMENT, PLUGIN_OPTION

app = typer.Typer(no_args_is_help=True)


def _load(config: Path | None, plugin: list[str], overrides: list[str] | None, strict: bool):
    manager = get_plugin_manager()
    with user_errors():
        for spec in plugin:
            manager.load_plugin(spec)
        return load_config_with_warnings(
            config, overrides or [], manager=manager, check_components=strict
        )


@app.command("show")
def show(
    config: Path | None = typer.Option(
        None, "--config", "-c", exists=True, dir_okay=False, help="YAML configuration file."
    ),
    plugin: list[str] = PLUGIN_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Print the resolved configuration (defaults + file + overrides) as YAML."""
    cfg, warnings = _load(config, plugin, overrides, strict=False)
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    typer.echo(dump_config(cfg), nl=False)


@app.command("validate")
def validate(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML file to check."),
    plugin: list[str] = PLUGIN_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Check a configuration file against the schema and the installed components."""
    _load(config, plugin, overrides, strict=True)
    typer.echo(f"{config}: valid")


@app.command("schema")
def schema(
    section: str | None = typer.Option(None, "--section", "-s", help="Only this section."),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown (for docs)."),
    core_only: bool = typer.Option(
        False, "--core-only", help="Leave out the options of installed components."
    ),
) -> None:
    """Document every configuration key with its type, default and help text."""
    components = []
    if not core_only:
        registry = get_plugin_manager().registry
        for sec, kind in COMPONENT_SECTIONS.items():
            components += [
                (sec, name, registry.get(kind, name).cls.Config) for name in registry.names(kind)
            ]
    if section is not None:
        known = core_sections()
        if section not in known:
            err_console.print(
                f"[red]error:[/] no section {escape(repr(section))}; sections: {', '.join(known)}"
            )
            raise typer.Exit(2)
        components = [c for c in components if c[0] == section]
    if markdown:
        typer.echo(schema_markdown(components, section), nl=False)
        return
    console = Console()
    for name, (help_, fields) in core_sections().items():
        if section in (None, name):
            console.print(_table(f"{name}: {help_}", fields))
    for sec, comp, config_cls in components:
        fields = dataclass_fields(config_cls, sec)
        if fields:
            console.print(_table(f"{sec}.name: {comp} -- options", fields))


def _table(title: str, fields: list[FieldDoc]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("key", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for f in fields:
        table.add_row(f.key, f.type, yaml_inline(f.default), f.help)
    return table
