"""Test isolation: installed plugins never leak into unit tests.

Every test runs with entry-point autoloading disabled and a fresh process-wide plugin
manager; tests that mean to see the installed plugins use the ``installed_plugins`` marker.
"""

from __future__ import annotations

import pytest

from lightrft_core import plugins


@pytest.fixture(autouse=True)
def _isolated_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    for var in (plugins.ENV_LOAD_PLUGINS, plugins.ENV_TRACE):
        monkeypatch.delenv(var, raising=False)
    if request.node.get_closest_marker("installed_plugins") is None:
        monkeypatch.setenv(plugins.ENV_DISABLE_PLUGIN_AUTOLOAD, "1")
    else:
        monkeypatch.delenv(plugins.ENV_DISABLE_PLUGIN_AUTOLOAD, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()
