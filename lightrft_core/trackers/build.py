"""The trackers of a run: ``logging.trackers`` names, ``logging.tracker_options`` options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from ..interfaces.tracker import Tracker
from ..plugins import PluginManager
from .builtin import ConsoleTracker


def tracker_config(cls: type[Tracker], options: Mapping[str, Any]) -> Any:
    """``cls.Config`` from ``logging.tracker_options.<name>``; a ``ValueError`` names an
    unknown key and the valid ones."""
    valid = [f.name for f in dataclasses.fields(cls.Config)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"logging.tracker_options.{cls.name}: unknown option(s) {unknown} for tracker "
            f"{cls.name!r} (valid: {', '.join(valid) or 'none'})"
        )
    return cls.Config(**options)


def build_trackers(
    names: list[str],
    options: Mapping[str, Mapping[str, Any]],
    manager: PluginManager,
    *,
    console: Console | None = None,
    log_every: int = 1,
) -> list[Tracker]:
    """One tracker per name (the console tracker prints to ``console`` every ``log_every``
    steps). An unknown name or option is an error, raised before the run trains."""
    unused = sorted(set(options) - set(names))
    if unused:
        raise ValueError(
            f"logging.tracker_options names {unused}, which logging.trackers does not list "
            f"({names})"
        )
    trackers: list[Tracker] = []
    for name in names:
        cls = manager.get_tracker(name)
        config = tracker_config(cls, options.get(name, {}))
        if cls is ConsoleTracker:
            trackers.append(ConsoleTracker(config, console=console, every=log_every))
        else:
            trackers.append(cls(config))
    return trackers
