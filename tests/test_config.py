"""Configuration: sources and precedence, typed parsing, and the errors users see."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field

import pytest

from lightrft_core import hookimpl
from lightrft_core.config import ConfigError, LightRFTConfig, dump_config, load_config
from lightrft_core.config.loader import load_config_with_warnings
from lightrft_core.config.types import field_types
from lightrft_core.interfaces import AdvantageOutput, Algorithm, PolicyLossOutput
from lightrft_core.plugins import PluginManager
from lightrft_core.testing import FakeEngine

FAKES = ["model.name=fake", "strategy.name=fake", "engine.name=fake", "reward.name=constant"]


class GroupAlgo(Algorithm):
    name = "group_algo"
    requires_groups = True

    @dataclass
    class Config:
        clip: float = field(default=0.2, metadata={"help": "Clip range."})
        mode: str = field(default="token-mean", metadata={"help": "Aggregation."})

        def __post_init__(self) -> None:
            if self.clip < 0:
                raise ValueError(f"clip must be >= 0, got {self.clip}")

    def compute_advantages(self, batch):
        return AdvantageOutput(advantages=batch.action_mask.float())

    def policy_loss(self, batch):
        return PolicyLossOutput(loss=batch.log_probs.sum())


class _Plugin:
    @hookimpl
    def lightrft_register_algorithms(self, register):
        register(GroupAlgo)


@pytest.fixture
def manager() -> PluginManager:
    pm = PluginManager(autoload=False)
    pm.register(_Plugin(), name="group-plugin")
    return pm


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(manager, path=None, *overrides):
    return load_config(path, [*FAKES, "algorithm.name=group_algo", *overrides], manager=manager)


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------- sources
def test_defaults_then_file_then_overrides(manager, tmp_path) -> None:
    path = write(
        tmp_path,
        """
        trainer:
          max_steps: 20
          learning_rate: 1e-5      # YAML 1.1 reads this as a string; it is a float field
        engine:
          temperature: 0.7
        """,
    )
    cfg = load(manager, path, "trainer.max_steps=30")
    assert cfg.trainer.max_steps == 30  # override beats file
    assert cfg.trainer.learning_rate == pytest.approx(1e-5)
    assert cfg.engine.temperature == 0.7
    assert cfg.trainer.micro_batch_size == 4  # default


@pytest.mark.parametrize(
    ("override", "attr", "expected"),
    [
        ("trainer.max_steps=7", ("trainer", "max_steps"), 7),
        ("trainer.learning_rate=3e-4", ("trainer", "learning_rate"), 3e-4),
        ("logging.tensorboard=false", ("logging", "tensorboard"), False),
        ("engine.stop_token_ids=[3, 4]", ("engine", "stop_token_ids"), [3, 4]),
        ("run.name=123", ("run", "name"), "123"),  # a str field keeps the text
        ("data.system_prompt=null", ("data", "system_prompt"), None),
        ("data.system_prompt=Be brief.", ("data", "system_prompt"), "Be brief."),
        ("trainer.lr_scheduler=cosine", ("trainer", "lr_scheduler"), "cosine"),
    ],
)
def test_overrides_are_parsed_to_the_field_type(manager, override, attr, expected) -> None:
    cfg = load(manager, None, override)
    assert getattr(getattr(cfg, attr[0]), attr[1]) == expected


def test_component_options_are_typed_by_the_component_config(manager, tmp_path) -> None:
    path = write(
        tmp_path,
        """
        engine:
          name: fake
          response_token_ids: [1, 2]
          log_prob: -2
        """,
    )
    cfg = load(manager, path, "algorithm.clip=0.3")
    assert isinstance(cfg.engine.options, FakeEngine.Config)
    assert cfg.engine.options.response_token_ids == [1, 2]
    assert cfg.engine.options.log_prob == -2.0
    assert cfg.algorithm.options.clip == 0.3


def test_dump_round_trips(manager, tmp_path) -> None:
    cfg = load(manager, None, "trainer.max_steps=9", "algorithm.clip=0.1", "run.plugins=[]")
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path, manager=manager)
    assert again == cfg


# ---------------------------------------------------------------------- errors
def test_misspelt_key_names_key_file_line_and_suggestion(manager, tmp_path) -> None:
    path = write(
        tmp_path,
        """
        run:
          name: demo
        trainer:
          max_step: 10
        """,
    )
    message = error_of(load, manager, path)
    assert f"{path}:4: trainer.max_step: unknown key; did you mean 'trainer.max_steps'?" in message


def test_misspelt_section_and_component_option(manager, tmp_path) -> None:
    path = write(
        tmp_path,
        """
        trainr:
          max_steps: 1
        engine:
          name: fake
          log_prb: -1.0
        """,
    )
    message = error_of(load, manager, path)
    assert "2 problems" in message
    assert f"{path}:1: trainr: unknown section; did you mean 'trainer'?" in message
    assert f"{path}:5: engine.log_prb: unknown key for engine 'fake'; did you mean " in message
    assert "'engine.log_prob'" in message


def test_unknown_key_without_close_match_lists_valid_keys(manager, tmp_path) -> None:
    message = error_of(load, manager, None, "logging.zzz=1")
    assert "command line 'logging.zzz=1': logging.zzz: unknown key (valid keys:" in message
    assert "log_every" in message


def test_wrong_types_say_what_was_expected(manager, tmp_path) -> None:
    path = write(tmp_path, "trainer:\n  max_steps: ten\n  lr_scheduler: cosin\n")
    message = error_of(load, manager, path)
    assert f"{path}:2: trainer.max_steps: expected an integer, got 'ten'" in message
    assert f"{path}:3: trainer.lr_scheduler: expected one of 'constant', 'cosine'" in message
    assert "did you mean 'cosine'?" in message


def test_override_errors_point_at_the_command_line(manager) -> None:
    message = error_of(load, manager, None, "engine.temperature=hot")
    assert "command line 'engine.temperature=hot': engine.temperature: expected a number" in message


def test_value_checks_report_the_key_and_line(manager, tmp_path) -> None:
    path = write(tmp_path, "trainer:\n  micro_batch_size: 4\n  max_steps: 0\n")
    message = error_of(load, manager, path)
    assert f"{path}:3: trainer.max_steps: trainer.max_steps must be > 0, got 0" in message


def test_component_config_checks_are_reported(manager) -> None:
    message = error_of(load, manager, None, "algorithm.clip=-1")
    assert "command line 'algorithm.clip=-1': algorithm.clip: clip must be >= 0" in message


def test_unknown_component_suggests_a_name(manager) -> None:
    message = error_of(load, manager, None, "strategy.name=fak")
    assert "strategy.name: no strategy named 'fak' is installed; did you mean 'fake'?" in message


def test_group_algorithm_refuses_a_single_sample(manager) -> None:
    message = error_of(load, manager, None, "engine.n_samples_per_prompt=1")
    assert "engine.n_samples_per_prompt: algorithm 'group_algo'" in message
    assert "needs n_samples_per_prompt >= 2, got 1" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trainer:\n  max_steps: [1\n", "not valid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("trainer:\n  max_steps: 1\n  max_steps: 2\n", "trainer.max_steps: duplicate key"),
        ("trainer: 5\n", "trainer: must be a mapping of keys, got 5"),
    ],
)
def test_malformed_files(manager, tmp_path, text, expected) -> None:
    path = write(tmp_path, text)
    message = error_of(load, manager, path)
    assert expected in message and str(path) in message


def test_malformed_override_and_missing_file(manager, tmp_path) -> None:
    assert "must look like section.key=value" in error_of(load, manager, None, "max_steps")
    assert "config file not found" in error_of(load, manager, tmp_path / "nope.yaml")


def test_unknown_component_is_a_warning_when_not_checking(manager) -> None:
    cfg, warnings = load_config_with_warnings(
        None,
        ["strategy.name=future", "strategy.zero_stage=3"],
        manager=manager,
        check_components=False,
    )
    assert cfg.strategy.options == {"zero_stage": 3}
    assert any("no strategy named 'future'" in w for w in warnings)


def test_run_plugins_are_loaded_before_components_are_checked(tmp_path, monkeypatch) -> None:
    (tmp_path / "run_listed_plugin.py").write_text(
        "from lightrft_core import hookimpl\n"
        "from lightrft_core.testing import ConstantReward\n"
        "class Listed(ConstantReward):\n"
        "    name = 'listed'\n"
        "@hookimpl\n"
        "def lightrft_register_reward_models(register):\n"
        "    register(Listed)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager(autoload=False)
    pm.register(_Plugin(), name="group-plugin")
    cfg = load_config(
        None,
        [
            *FAKES,
            "algorithm.name=group_algo",
            "run.plugins=[run_listed_plugin]",
            "reward.name=listed",
        ],
        manager=pm,
    )
    assert cfg.reward.name == "listed"


# ---------------------------------------------------------------------- the schema itself
def _all_fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        yield f"{prefix}{f.name}", f
        if dataclasses.is_dataclass(tp):
            yield from _all_fields(tp, f"{prefix}{f.name}.")


def test_every_config_field_has_help_and_a_default() -> None:
    for key, f in _all_fields(LightRFTConfig):
        assert f.metadata.get("help"), f"{key} has no help text"
        has_default = f.default is not dataclasses.MISSING or (
            f.default_factory is not dataclasses.MISSING
        )
        assert has_default, f"{key} has no default"


def test_sections_a_command_does_not_use_need_no_installed_component() -> None:
    """lightrft sft / rm: the default algorithm (grpo) need not be installed; a missing
    strategy is still an error, and an installed component of an unused section is still
    checked."""
    from lightrft_core.plugins import PluginManager

    pm = PluginManager(autoload=False)  # the built-ins only: no algorithm at all
    unused = ("engine", "algorithm", "reward")
    with pytest.raises(ConfigError, match="algorithm.name"):
        load_config(None, [], manager=pm)
    cfg = load_config(None, ["algorithm.clip=0.3"], manager=pm, unused_sections=unused)
    assert cfg.algorithm.name == "grpo"
    with pytest.raises(ConfigError, match="strategy.name"):
        load_config(None, ["strategy.name=nowhere"], manager=pm, unused_sections=unused)
    with pytest.raises(ConfigError, match="reward.nonsense"):  # math is installed: checked
        load_config(None, ["reward.nonsense=1"], manager=pm, unused_sections=unused)
