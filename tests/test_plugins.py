"""The plugin manager: registration checks, duplicates, broken plugins, loading, env."""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import textwrap
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from lightrft_core import hookimpl, plugins
from lightrft_core.interfaces import AdvantageOutput, Algorithm, PolicyLossOutput
from lightrft_core.plugins import PluginLoadError, PluginManager
from lightrft_core.registry import (
    ComponentRegistry,
    DuplicateComponentError,
    Register,
    RegistrationError,
    UnknownComponentError,
)
from lightrft_core.testing import ConstantReward, FakeEngine, FakeStrategy


class ToyAlgorithm(Algorithm):
    name = "toy"

    @dataclass
    class Config:
        coef: float = field(default=1.0, metadata={"help": "A coefficient."})

    def compute_advantages(self, batch):
        return AdvantageOutput(advantages=batch.action_mask.float())

    def policy_loss(self, batch):
        return PolicyLossOutput(loss=batch.log_probs.sum())


class OtherToy(ToyAlgorithm):
    pass


def algorithm_plugin(*classes):
    class Plugin:
        @hookimpl
        def lightrft_register_algorithms(self, register):
            for cls in classes:
                register(cls)

    return Plugin()


def test_builtins_are_registered_through_the_hooks() -> None:
    pm = PluginManager(autoload=False)
    assert pm.get_strategy("fake") is FakeStrategy
    assert pm.get_engine("fake") is FakeEngine
    assert pm.get_reward_model("constant") is ConstantReward
    builtin = next(p for p in pm.plugins() if p.name == "builtins")
    assert builtin.source == "builtin" and builtin.status == "ok"
    assert "strategy:fake" in builtin.components
    assert "lightrft_register_strategies" in builtin.hooks


def test_a_plugin_registered_for_a_test_is_found_and_then_removed() -> None:
    pm = PluginManager(autoload=False)
    pm.register(algorithm_plugin(ToyAlgorithm), name="toy-plugin")
    try:
        assert pm.get_algorithm("toy") is ToyAlgorithm
        assert pm.component_info("algorithm", "toy").plugin == "toy-plugin"
    finally:
        pm.unregister("toy-plugin")
    with pytest.raises(UnknownComponentError, match="no algorithm named 'toy'"):
        pm.get_algorithm("toy")


def test_duplicate_name_is_refused_naming_both_plugins(caplog) -> None:
    pm = PluginManager(autoload=False)
    pm.register(algorithm_plugin(ToyAlgorithm), name="first")
    pm.register(algorithm_plugin(OtherToy), name="second")
    assert pm.get_algorithm("toy") is ToyAlgorithm
    second = next(p for p in pm.plugins() if p.name == "second")
    assert second.status == "broken"
    assert "'first'" in second.error and "'second'" in second.error
    assert "registered twice" in caplog.text


def test_register_object_refuses_duplicates_directly() -> None:
    registry = ComponentRegistry()
    first = Register("algorithm", registry, "a")
    first(ToyAlgorithm)
    first.commit()
    with pytest.raises(DuplicateComponentError, match="by plugin 'a'.*by plugin 'b'"):
        Register("algorithm", registry, "b")(OtherToy)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (FakeStrategy, "does not subclass"),
        (type("NoName", (ToyAlgorithm,), {"name": ""}), "name must be a lower-case string"),
        (type("Abstract", (Algorithm,), {"name": "abstract"}), "abstract methods"),
        (
            type(
                "NoDefault",
                (ToyAlgorithm,),
                {
                    "name": "nodefault",
                    "Config": dataclass(type("Config", (), {"__annotations__": {"x": int}})),
                },
            ),
            "has no default",
        ),
        (42, "is not a class"),
    ],
)
def test_register_checks_the_interface(cls, message) -> None:
    with pytest.raises(RegistrationError, match=message):
        Register("algorithm", ComponentRegistry(), "p")(cls)


def test_a_hook_that_raises_marks_only_its_plugin_broken() -> None:
    class Bad:
        @hookimpl
        def lightrft_register_algorithms(self, register):
            raise RuntimeError("boom in registration")

    pm = PluginManager(autoload=False)
    pm.register(Bad(), name="bad")
    pm.register(algorithm_plugin(ToyAlgorithm), name="good")
    assert pm.get_algorithm("toy") is ToyAlgorithm
    bad = next(p for p in pm.plugins() if p.name == "bad")
    assert bad.status == "broken" and "boom in registration" in bad.error


def test_unknown_hook_name_is_refused_with_a_suggestion() -> None:
    class Typo:
        @hookimpl
        def lightrft_register_algorithm(self, register):
            pass

    pm = PluginManager(autoload=False)
    with pytest.raises(PluginLoadError, match="did you mean 'lightrft_register_algorithms'"):
        pm.register(Typo(), name="typo")
    info = pm.register(Typo(), name="typo2", strict=False)
    assert info.status == "broken"


def test_unknown_component_suggests_the_closest_name() -> None:
    pm = PluginManager(autoload=False)
    with pytest.raises(UnknownComponentError, match="did you mean 'fake'.*Available strategy"):
        pm.get_strategy("fak")


# ---------------------------------------------------------------------- entry points
@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    """Two importable plugin modules exposed as entry points; one raises at import."""
    (tmp_path / "ep_good_plugin.py").write_text(
        textwrap.dedent(
            """
            from lightrft_core import hookimpl
            LOADS = []
            LOADS.append(1)

            @hookimpl
            def lightrft_register_reward_models(register):
                from lightrft_core.testing import ConstantReward

                class Seven(ConstantReward):
                    name = "seven"
                register(Seven)
            """
        )
    )
    (tmp_path / "ep_broken_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        metadata.EntryPoint("good", "ep_good_plugin", "lightrft"),
        metadata.EntryPoint("broken", "ep_broken_plugin", "lightrft"),
    ]
    calls = SimpleNamespace(n=0)

    def entry_points(group):
        calls.n += 1
        return eps if group == "lightrft" else []

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    yield calls
    for mod in ("ep_good_plugin", "ep_broken_plugin"):
        sys.modules.pop(mod, None)


def test_a_plugin_that_raises_at_import_is_reported_not_fatal(fake_entry_points, caplog) -> None:
    pm = PluginManager(autoload=True)
    assert pm.get_reward_model("seven").name == "seven"
    broken = next(p for p in pm.plugins() if p.name == "broken")
    assert broken.status == "broken"
    assert "ImportError: missing dependency xyz" in broken.error
    assert "plugin 'broken'" in caplog.text and "skipped" in caplog.text


def test_entry_points_are_loaded_lazily_and_once(fake_entry_points) -> None:
    pm = PluginManager(autoload=True)
    assert fake_entry_points.n == 0
    pm.plugins()
    pm.get_reward_model("seven")
    pm.plugins()
    assert fake_entry_points.n == 1
    assert sys.modules["ep_good_plugin"].LOADS == [1]


def test_disable_autoload_env(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv(plugins.ENV_DISABLE_PLUGIN_AUTOLOAD, "1")
    pm = PluginManager()
    statuses = {p.name: p.status for p in pm.plugins()}
    assert statuses["good"] == "disabled" and statuses["broken"] == "disabled"
    with pytest.raises(UnknownComponentError):
        pm.get_reward_model("seven")
    pm.load_plugin("good")  # --plugin still loads an entry point by name
    assert pm.get_reward_model("seven").name == "seven"


def test_load_plugins_env_selects_entry_points(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv(plugins.ENV_LOAD_PLUGINS, "good")
    pm = PluginManager()
    statuses = {p.name: p.status for p in pm.plugins()}
    assert statuses == {"builtins": "ok", "good": "ok", "broken": "disabled"}


def test_trace_env_prints_hook_calls(fake_entry_points, monkeypatch, capsys) -> None:
    monkeypatch.setenv(plugins.ENV_TRACE, "1")
    PluginManager(autoload=True).plugins()
    err = capsys.readouterr().err
    assert "loading entry point 'good'" in err
    assert "calling lightrft_register_reward_models of plugin 'good'" in err
    assert "registered reward components ['seven']" in err


def test_an_explicitly_requested_broken_plugin_is_fatal(fake_entry_points) -> None:
    pm = PluginManager(autoload=False)
    with pytest.raises(PluginLoadError, match="missing dependency xyz"):
        pm.load_plugin("broken")


# ---------------------------------------------------------------------- --plugin X
def test_plugin_resolves_a_module_name(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_local_algo.py").write_text(
        "from lightrft_core import hookimpl\n"
        "from tests_support_toy import ToyAlgorithm\n"
        "@hookimpl\n"
        "def lightrft_register_algorithms(register):\n"
        "    register(ToyAlgorithm)\n"
    )
    monkeypatch.setitem(
        sys.modules, "tests_support_toy", SimpleNamespace(ToyAlgorithm=ToyAlgorithm)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager(autoload=False)
    info = pm.load_plugin("my_local_algo")
    assert info.source == "module"
    assert pm.get_algorithm("toy") is ToyAlgorithm
    sys.modules.pop("my_local_algo", None)


def test_plugin_resolves_a_python_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "file_algo.py"
    path.write_text(
        "from lightrft_core import hookimpl\n"
        "import tests_support_toy\n"
        "@hookimpl\n"
        "def lightrft_register_algorithms(register):\n"
        "    register(tests_support_toy.ToyAlgorithm)\n"
    )
    monkeypatch.setitem(
        sys.modules, "tests_support_toy", SimpleNamespace(ToyAlgorithm=ToyAlgorithm)
    )
    pm = PluginManager(autoload=False)
    assert pm.load_plugin(str(path)).source == "file"
    assert pm.get_algorithm("toy") is ToyAlgorithm


def test_plugin_not_found_says_what_was_tried(tmp_path) -> None:
    pm = PluginManager(autoload=False)
    with pytest.raises(PluginLoadError, match="not an installed entry point.*not an importable"):
        pm.load_plugin("no_such_plugin_anywhere")
    with pytest.raises(PluginLoadError, match="no file at"):
        pm.load_plugin(str(tmp_path / "missing.py"))


def test_module_lookups_use_the_process_wide_manager() -> None:
    assert plugins.get_strategy("fake") is FakeStrategy
    assert plugins.get_plugin_manager() is plugins.get_plugin_manager()


def test_an_explicit_plugin_whose_registration_fails_is_fatal(tmp_path) -> None:
    path = tmp_path / "clashing.py"
    path.write_text(
        "from lightrft_core import hookimpl\n"
        "from lightrft_core.testing import FakeStrategy\n"
        "@hookimpl\n"
        "def lightrft_register_strategies(register):\n"
        "    register(FakeStrategy)\n"
    )
    pm = PluginManager(autoload=False)
    with pytest.raises(PluginLoadError, match="registered twice: by plugin 'builtins'"):
        pm.load_plugin(str(path))


def test_a_plugin_failing_for_one_kind_registers_nothing() -> None:
    class HalfBroken:
        @hookimpl
        def lightrft_register_algorithms(self, register):
            register(ToyAlgorithm)

        @hookimpl
        def lightrft_register_engines(self, register):
            raise RuntimeError("engine import failed")

    pm = PluginManager(autoload=False)
    pm.register(HalfBroken(), name="half")
    info = next(p for p in pm.plugins() if p.name == "half")
    assert info.status == "broken" and info.components == []
    with pytest.raises(UnknownComponentError):
        pm.get_algorithm("toy")


def test_overrides_of_an_unknown_section_point_at_the_command_line(tmp_path) -> None:
    from lightrft_core.config import ConfigError, load_config

    path = tmp_path / "ok.yaml"
    path.write_text("trainer:\n  max_steps: 1\n")
    with pytest.raises(ConfigError, match=r"command line 'trainr\.max_steps=2': trainr: unknown"):
        load_config(
            path,
            ["trainr.max_steps=2"],
            manager=PluginManager(autoload=False),
            check_components=False,
        )
