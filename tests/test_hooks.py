"""Every hook spec works (one test each), is documented with its exact signature, and
has a test -- the meta-tests keep the plugin surface honest."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import typer
from typer.testing import CliRunner

from lightrft_core import hookimpl, hookspecs
from lightrft_core.interfaces import COMPONENT_KINDS
from lightrft_core.plugins import PluginManager
from lightrft_core.registry import REGISTRATION_HOOKS
from lightrft_core.testing import ConstantReward, FakeActor, FakeEngine, FakeStrategy

DOC = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("lightrft_") and callable(f))


def signature_text(name: str) -> str:
    """``name(arg: Annotation) -> Return`` exactly as written in hookspecs.py."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def documented_signatures() -> dict[str, str]:
    text = DOC.read_text()
    pattern = re.compile(r"^### (lightrft_\w+)\s*\n\s*```python\n(.+?)\n```", re.MULTILINE)
    return {m.group(1): m.group(2).strip() for m in pattern.finditer(text)}


def test_every_hook_is_documented_with_its_signature() -> None:
    documented = documented_signatures()
    for name in HOOKS:
        assert name in documented, f"{name} is not documented in docs/hooks.md"
        assert documented[name] == signature_text(name), f"docs/hooks.md: {name} signature"
    assert set(documented) == set(HOOKS), "docs/hooks.md documents hooks that do not exist"


def test_every_hook_has_a_test() -> None:
    tested = {n.removeprefix("test_hook_") for n in globals() if n.startswith("test_hook_")}
    assert set(HOOKS) <= tested, f"hooks without a test_hook_<name>: {set(HOOKS) - tested}"


def test_every_component_kind_has_a_registration_hook() -> None:
    assert set(REGISTRATION_HOOKS) == set(COMPONENT_KINDS)
    assert set(REGISTRATION_HOOKS.values()) <= set(HOOKS)


# ---------------------------------------------------------------------- one test per hook
def _register_via(hook_name: str, cls: type) -> PluginManager:
    plugin = type("Plugin", (), {hook_name: hookimpl(staticmethod(lambda register: register(cls)))})
    pm = PluginManager(builtins=False, autoload=False)
    pm.register(plugin(), name="under-test")
    return pm


def _renamed(cls: type, name: str) -> type:
    return type(f"Renamed{cls.__name__}", (cls,), {"name": name})


def test_hook_lightrft_register_strategies() -> None:
    cls = _renamed(FakeStrategy, "my_strategy")
    assert _register_via("lightrft_register_strategies", cls).get_strategy("my_strategy") is cls


def test_hook_lightrft_register_actors() -> None:
    cls = _renamed(FakeActor, "my_actor")
    assert _register_via("lightrft_register_actors", cls).get_actor("my_actor") is cls


def test_hook_lightrft_register_reward_models() -> None:
    cls = _renamed(ConstantReward, "my_reward")
    assert (
        _register_via("lightrft_register_reward_models", cls).get_reward_model("my_reward") is cls
    )


def test_hook_lightrft_register_engines() -> None:
    cls = _renamed(FakeEngine, "my_engine")
    assert _register_via("lightrft_register_engines", cls).get_engine("my_engine") is cls


def test_hook_lightrft_register_algorithms() -> None:
    from lightrft_core.interfaces import AdvantageOutput, Algorithm, PolicyLossOutput

    class Algo(Algorithm):
        name = "my_algo"

        def compute_advantages(self, batch):
            return AdvantageOutput(advantages=batch.action_mask.float())

        def policy_loss(self, batch):
            return PolicyLossOutput(loss=batch.log_probs.sum())

    assert _register_via("lightrft_register_algorithms", Algo).get_algorithm("my_algo") is Algo


def test_hook_lightrft_register_advantage_estimators() -> None:
    from lightrft_core.interfaces import AdvantageEstimator, AdvantageOutput

    class Estimator(AdvantageEstimator):
        name = "my_estimator"

        def __call__(self, batch):
            return AdvantageOutput(advantages=batch.action_mask.float())

    pm = _register_via("lightrft_register_advantage_estimators", Estimator)
    assert pm.get_component("advantage", "my_estimator") is Estimator


def test_hook_lightrft_register_policy_losses() -> None:
    from lightrft_core.interfaces import PolicyLoss, PolicyLossOutput

    class Loss(PolicyLoss):
        name = "my_loss"

        def __call__(self, batch):
            return PolicyLossOutput(loss=(batch.log_probs * batch.advantages).mean())

    pm = _register_via("lightrft_register_policy_losses", Loss)
    assert pm.get_component("loss", "my_loss") is Loss


def test_hook_lightrft_register_patches() -> None:
    from lightrft_core.interfaces import ModelPatch

    class Patch(ModelPatch):
        name = "my_patch"

        @dataclass
        class Config:
            scale: float = field(default=1.0, metadata={"help": "x"})

        def apply(self) -> None:
            pass

        def revert(self) -> None:
            pass

    assert _register_via("lightrft_register_patches", Patch).get_patch("my_patch") is Patch


def test_hook_lightrft_register_trackers() -> None:
    from lightrft_core.interfaces import Tracker

    class MyTracker(Tracker):
        name = "my_tracker"

        def start(self, run) -> None:
            pass

        def log_metrics(self, step, metrics) -> None:
            pass

    pm = _register_via("lightrft_register_trackers", MyTracker)
    assert pm.get_tracker("my_tracker") is MyTracker


def test_hook_lightrft_add_cli_commands() -> None:
    class Plugin:
        @hookimpl
        def lightrft_add_cli_commands(self, app):
            @app.command("hello")
            def hello(name: str = "world") -> None:
                typer.echo(f"hello {name}")

    app = typer.Typer()

    @app.command("noop")
    def noop() -> None:
        pass

    pm = PluginManager(autoload=False)
    pm.register(Plugin(), name="cli-plugin")
    pm.add_cli_commands(app)
    result = CliRunner().invoke(app, ["hello", "--name", "lightrft"])
    assert result.exit_code == 0 and result.output.strip() == "hello lightrft"
