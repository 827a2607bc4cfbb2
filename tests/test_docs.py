"""The hand-written pages against the code: the configuration keys they quote, their option
tables, their YAML configurations, their ``lightrft`` commands and the links between them.

Pages: README.md, docs/*.md, docs/algorithms/*.md and every plugin's README.md. Each
problem is one line: ``page:line: what is wrong``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import shlex
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import typer
import yaml
from transformers import GenerationMixin, PreTrainedModel
from typer.core import TyperGroup, TyperOption

from lightrft_cli.main import app
from lightrft_core.config import COMPONENT_SECTIONS, ConfigError, LightRFTConfig, load_config
from lightrft_core.config.describe import core_sections, dataclass_fields, yaml_inline
from lightrft_core.config.types import field_types
from lightrft_core.interfaces.actor import Actor
from lightrft_core.interfaces.algorithm import Algorithm
from lightrft_core.interfaces.engine import InferenceEngine
from lightrft_core.interfaces.reward import RewardModel
from lightrft_core.interfaces.strategy import StrategyBase
from lightrft_core.interfaces.tracker import TrackedRun
from lightrft_core.plugins import PluginManager
from lightrft_core.registry import ComponentInfo
from lightrft_core.trainer.rl import RLTrainer

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("docs/algorithms/*.md"),
        *ROOT.glob("plugins/*/README.md"),
    ]
)
SECTIONS = [f.name for f in dataclasses.fields(LightRFTConfig)]

#: Dotted names in backticks that start like a configuration key but are not one.
NOT_KEYS: dict[str, str] = {
    "algorithm.critic_learning_rate": "ppo.md names the key it was before trainer's",
    "trainer.compile": "benchmarks.md names a switch that does not exist",
    "reward.tolerance": "an option of rewards.md's example reward plugin (my_reward.py)",
    "algorithm.reward_scale": "an option of plugins.md's example algorithm plugin",
    "algorithm.scale": "an option of plugins.md's example estimator plugin (batch_mean.py)",
    "algorithm.context": "the Algorithm's attribute, set in __init__ (no class attribute)",
    "model.load_weights": "the method of vLLM's model (engines.md)",
    "trainer.zzz": "configuration.md's example of an unknown key and its error",
}

#: In prose, a section's name is also the name of an object in code (``strategy.prepare``,
#: ``engine.generate``): a name that is not a key but an attribute of that object is code.
CODE_OBJECTS: dict[str, tuple[type, ...]] = {
    "run": (TrackedRun,),
    "model": (Actor, PreTrainedModel, GenerationMixin),
    "strategy": (StrategyBase,),
    "engine": (InferenceEngine,),
    "algorithm": (Algorithm,),
    "reward": (RewardModel,),
    "trainer": (RLTrainer,),
}

#: A last part that makes a dotted name a file name (``run.json``, ``model.safetensors``).
FILE_SUFFIXES = {"json", "jsonl", "csv", "yaml", "safetensors", "parquet", "pt", "py"}

#: Parameter and module names of a transformers model, written ``model.visual.*``.
MODULE_PREFIXES = ("model.visual", "model.audio_tower", "model.language_model")
MODULE_PREFIXES += ("model.multi_modal_projector", "model.model")

COMMAND_LANGUAGES = {"", "bash", "sh", "shell", "console"}

#: A command's argument that starts with one of these is a file of the repository.
REPOSITORY_FOLDERS = ("examples/", "lightrft_core/", "lightrft_cli/", "plugins/", "docs/")


# ---------------------------------------------------------------------- reading pages
@dataclass(frozen=True)
class CodeBlock:
    line: int  # of the block's first line of content
    language: str
    text: str
    preceding: str  # the last non-blank line of prose before the block


@dataclass(frozen=True)
class Page:
    path: Path
    name: str  # relative to the repository
    prose: str  # the page with code blocks blanked (line numbers kept)
    blocks: tuple[CodeBlock, ...]

    def where(self, offset: int) -> str:
        """``page:line`` of a character offset in ``prose``."""
        line = self.prose.count("\n", 0, offset) + 1
        return f"{self.name}:{line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)


@cache
def read_page(path: Path) -> Page:
    prose: list[str] = []
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, language = opening.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        preceding = next((line.strip() for line in reversed(prose) if line.strip()), "")
        blocks.append(CodeBlock(i + 2, language.lower(), "\n".join(body), preceding))
        prose += [""] * (min(end, len(lines) - 1) - i + 1)
        i = end + 1
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    return Page(path, name, "\n".join(prose), tuple(blocks))


def inline_code(page: Page) -> Iterator[tuple[int, str]]:
    """``(offset in prose, text)`` of every inline code span."""
    for match in INLINE_CODE.finditer(page.prose):
        yield match.start(2), match.group(2)


def without_inline_code(prose: str) -> str:
    return INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)


# ---------------------------------------------------------------------- configuration keys
@cache
def manager_for_pages() -> PluginManager:
    """The built-ins and every installed plugin (not the per-test isolated manager)."""
    plugins = PluginManager(autoload=True)
    plugins.load_entry_points()
    return plugins


class KnownKeys:
    """Every key of each section: its core fields, and the options of every registered
    component of its kind (the algorithm section also takes advantage and loss options)."""

    def __init__(self, manager: PluginManager) -> None:
        section_types = field_types(LightRFTConfig)
        self.types: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            cls = section_types[section]
            core = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("options")}
            self.types[section] = {k: t for k, t in field_types(cls).items() if k in core}
        kinds = {section: [kind] for section, kind in COMPONENT_SECTIONS.items()}
        kinds["algorithm"] += ["advantage", "loss"]
        for section, section_kinds in kinds.items():
            for kind in section_kinds:
                for name in manager.registry.names(kind):
                    options = manager.registry.get(kind, name).cls.Config
                    self.types[section].update(field_types(options))

    def problem(self, dotted: str) -> str | None:
        """Why ``dotted`` (``section.key[.more]``) is not a key; ``None`` when it is one."""
        section, key, *deeper = dotted.split(".")
        keys = self.types[section]
        if key.startswith("<"):  # a placeholder: algorithm.<option>
            return None
        if "*" in key:
            return None if fnmatch.filter(keys, key) else f"no key matches {dotted}"
        if key not in keys:
            return f"unknown configuration key {dotted}"
        if deeper and typing.get_origin(keys[key]) is not dict:
            return f"{section}.{key} is not a mapping, so {dotted} is not a key"
        return None


@cache
def known_keys() -> KnownKeys:
    return KnownKeys(manager_for_pages())


def key_problem(dotted: str) -> str | None:
    """Why ``dotted`` is not a key, unless it is one of ``NOT_KEYS``."""
    return None if dotted in NOT_KEYS else known_keys().problem(dotted)


KEY = re.compile(rf"(?<![\w./$-])(?:{'|'.join(SECTIONS)})(?:\.(?:[A-Za-z_*][\w*-]*|<\w+>))+")


def is_code(dotted: str, after: str) -> bool:
    """Whether a dotted name in prose is code, a file or a module, not a key."""
    section, name, *deeper = dotted.split(".")
    if after == "(" or (deeper and deeper[-1] in FILE_SUFFIXES) or name in FILE_SUFFIXES:
        return True
    if dotted.startswith(MODULE_PREFIXES):
        return True
    return any(name in _attributes(cls) for cls in CODE_OBJECTS.get(section, ()))


@cache
def _attributes(cls: type) -> frozenset[str]:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return frozenset(dir(cls)) | fields


def quoted_keys(page: Page) -> Iterator[tuple[str, str]]:
    """``(page:line, key)`` of every configuration key quoted in backticks in prose."""
    for offset, text in inline_code(page):
        for match in KEY.finditer(text):
            after = text[match.end() : match.end() + 1]
            dotted = match.group(0)
            if is_code(dotted, after):
                continue
            yield page.where(offset + match.start()), dotted


def key_problems(page: Page) -> list[str]:
    return [
        f"{where}: {problem}"
        for where, dotted in quoted_keys(page)
        if (problem := key_problem(dotted))
    ]


def test_quoted_configuration_keys_exist() -> None:
    problems = [problem for path in PAGES for problem in key_problems(read_page(path))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- option tables
#: The header of a table of options and their defaults: ``| key | default | meaning |``.
OPTION_TABLE = re.compile(r"\|\s*(?:key|option)\s*\|[^|]*default[^|]*\|.*")


def option_rows(page: Page) -> Iterator[tuple[str, list[str], list[str]]]:
    """``(page:line, keys, defaults)`` of each row of an option table; a row may document
    several keys (``gamma`` / ``lam``) or one key's defaults in several components."""
    in_table = False
    for number, line in enumerate(page.prose.split("\n"), start=1):
        if OPTION_TABLE.fullmatch(line.strip()):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not set(line) <= set("|-: "):
            key_cell, default_cell = re.split(r"(?<!\\)\|", line.strip().strip("|"))[:2]
            keys = re.findall(r"`([^`]+)`", key_cell)
            yield f"{page.name}:{number}", keys, re.findall(r"`([^`]*)`", default_cell)


def page_components(page: Page) -> list[ComponentInfo]:
    """The components a page documents: an algorithm page's algorithm and its variants
    (``reinforce_pp_baseline``), a plugin README's plugin's components; every component for
    the other pages."""
    registry = manager_for_pages().registry
    if page.path.parent == ROOT / "docs" / "algorithms":
        stem = page.path.stem
        return [
            c
            for c in registry
            if c.kind == "algorithm" and (c.name == stem or c.name.startswith(f"{stem}_"))
        ]
    if page.path.name == "README.md" and page.path.parent.parent == ROOT / "plugins":
        plugins = {p.name: p.distribution for p in manager_for_pages().plugins()}
        return [c for c in registry if plugins[c.plugin] == page.path.parent.name]
    return list(registry)


def defaults_of(key: str, components: list[ComponentInfo]) -> list[Any]:
    """The defaults of ``key``: a core key (``trainer.packing``), else an option of one of
    ``components``."""
    core = [f.default for _, fields in core_sections().values() for f in fields if f.key == key]
    return core or [
        f.default for c in components for f in dataclass_fields(c.cls.Config, "") if f.key == key
    ]


def same_value(written: str, default: Any) -> bool:
    """Whether a table's ``written`` default is the code's ``default``."""
    if written == yaml_inline(default):
        return True
    try:
        value = yaml.safe_load(written)
    except yaml.YAMLError:
        return False
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?e[-+]?\d+", value):
        value = float(value)  # YAML 1.1 reads 1e-6 as text; the loader takes it as a number
    return value == default


def option_table_problems(page: Page) -> Iterator[str]:
    components = page_components(page)
    for where, keys, written in option_rows(page):
        if len(keys) > 1 and len(keys) != len(written):
            yield f"{where}: {len(keys)} keys but {len(written)} defaults"
            continue
        if len(keys) > 1:
            rows = [(key, [value]) for key, value in zip(keys, written, strict=True)]
        else:
            rows = [(key, written) for key in keys]
        for key, values in rows:
            defaults = defaults_of(key, components)
            if not defaults:
                yield f"{where}: {key} is no core key nor an option of the page's components"
            for value in values:
                if defaults and not any(same_value(value, d) for d in defaults):
                    shown = ", ".join(sorted({yaml_inline(d) for d in defaults}))
                    yield f"{where}: {key} defaults to {shown}, not {value}"


def test_option_tables_match_the_defaults() -> None:
    problems = [problem for path in PAGES for problem in option_table_problems(read_page(path))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- YAML configurations
#: A YAML block that is no runnable configuration on its own says why on the line before it.
UNCHECKED = re.compile(r"<!-- not checked: (.+) -->")


def yaml_configurations(page: Page) -> Iterator[tuple[CodeBlock, Any]]:
    """Every YAML block whose top level holds a known section, with its data (or the YAML
    error), less those marked ``<!-- not checked: REASON -->``."""
    for block in page.blocks:
        if block.language not in ("yaml", "yml") or UNCHECKED.fullmatch(block.preceding):
            continue
        try:
            data = yaml.safe_load(block.text)
        except yaml.YAMLError as exc:
            yield block, exc
            continue
        if isinstance(data, dict) and set(data) & set(SECTIONS):
            yield block, data


def configuration_problems(page: Page, folder: Path) -> list[str]:
    """What the real loader, with the installed plugins, says about each configuration."""
    problems = []
    file = folder / "page.yaml"
    for block, data in yaml_configurations(page):
        if isinstance(data, yaml.YAMLError):
            problems.append(f"{page.name}:{block.line}: not valid YAML: {data}")
            continue
        file.write_text(block.text, encoding="utf-8")
        try:
            load_config(file, manager=manager_for_pages())
        except ConfigError as exc:
            for issue in exc.issues:
                _, _, line = (issue.location or "").rpartition(":")
                number = block.line + int(line) - 1 if line.isdigit() else block.line
                key = f"{issue.key}: " if issue.key else ""
                problems.append(f"{page.name}:{number}: {key}{issue.message}")
    return problems


def test_yaml_configurations_validate(tmp_path: Path) -> None:
    problems = [
        problem for path in PAGES for problem in configuration_problems(read_page(path), tmp_path)
    ]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- lightrft commands
@cache
def cli() -> TyperGroup:
    command = typer.main.get_command(app)
    assert isinstance(command, TyperGroup)
    return command


def command_lines(page: Page) -> Iterator[tuple[str, str]]:
    """``(page:line, line)`` of every shell line in code blocks (continuations joined; only
    the ``$ `` lines of a block that shows a prompt) and every inline code span that starts
    with ``lightrft``."""
    for block in page.blocks:
        if block.language not in COMMAND_LANGUAGES:
            continue
        lines = block.text.split("\n")
        prompted = any(line.startswith("$ ") for line in lines)
        logical, first = "", 0
        for number, line in enumerate(lines, start=block.line):
            if not logical:
                if prompted and not line.startswith("$ "):
                    continue
                first = number
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            yield f"{page.name}:{first}", (logical + line).removeprefix("$ ")
            logical = ""
    for offset, text in inline_code(page):
        if re.match(r"lightrft [a-z-]", text):
            yield page.where(offset), text


def lightrft_arguments(line: str) -> Iterator[list[str]]:
    """The arguments of each ``lightrft`` (or ``-m lightrft_cli``) call in a shell line."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose-like text
        tokens = line.split()
    segment: list[str] = []
    for token in [*tokens, "&&"]:
        if token not in ("&&", "||", ";", "|"):
            segment.append(token)
            continue
        words = list(segment)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words.pop(0)
        if words[:1] == ["lightrft"]:
            yield words[1:]
        elif "lightrft_cli" in words and words[words.index("lightrft_cli") - 1] == "-m":
            yield words[words.index("lightrft_cli") + 1 :]
        segment = []


#: A word of a synopsis that stands for something (``COMMAND``, ``ARGS...``, ``<run>``).
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*(\.\.\.)?|<[^>]*>|\.\.\.|…")


def call_problems(arguments: list[str]) -> Iterator[str]:
    """What is wrong with one call's command, options, ``section.key=value`` overrides and
    repository files; a synopsis's ``[--a | -b]`` and ``show|validate`` are alternatives."""
    command: Any = cli()
    path = ["lightrft"]
    words = [alternative for word in arguments for alternative in word.strip("[]").split("|")]
    while isinstance(command, TyperGroup) and words and not words[0].startswith("-"):
        if PLACEHOLDER.fullmatch(words[0]):
            return
        name = words.pop(0)
        if name not in command.commands:
            yield f"'{' '.join(path)}' has no command {name!r}"
            return
        while words and words[0] in command.commands:  # show|validate: the others
            words.pop(0)
        command = command.commands[name]
        path.append(name)
    options = {"-h", "--help"} | {
        option
        for param in command.params
        if isinstance(param, TyperOption)
        for option in (*param.opts, *param.secondary_opts)
    }
    for word in words:
        option, _, value = word.partition("=")
        if re.fullmatch(r"--?[A-Za-z][\w-]*", option) and option not in options:
            yield f"'{' '.join(path)}' has no option {option}"
        elif value and word.split(".")[0] in SECTIONS:
            problem = key_problem(option)
            if problem:
                yield problem
        file = value if option.startswith("-") else word
        if file.startswith(REPOSITORY_FOLDERS) and not (ROOT / file).exists():
            yield f"no file {file}"


def command_problems(page: Page) -> list[str]:
    return [
        f"{where}: {problem}"
        for where, line in command_lines(page)
        for arguments in lightrft_arguments(line)
        for problem in call_problems(arguments)
    ]


def test_lightrft_commands_exist() -> None:
    problems = [problem for path in PAGES for problem in command_problems(read_page(path))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- links
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces
    turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    page = read_page(path)
    seen: dict[str, int] = {}
    found = set(HTML_ANCHOR.findall(page.prose))
    for heading in HEADING.findall(page.prose):
        slug = github_slug(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def relative_links(page: Page) -> Iterator[tuple[str, str, Path]]:
    """``(page:line, target, resolved file)`` of every relative link in prose."""
    prose = without_inline_code(page.prose)
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"[a-z]+:", target) or target.startswith("/"):
            continue
        file = target.partition("#")[0]
        resolved = (page.path.parent / file).resolve() if file else page.path
        yield page.where(match.start()), target, resolved


def link_problems(page: Page) -> Iterator[str]:
    """Relative links whose file, or whose Markdown page's heading, does not exist."""
    for where, target, resolved in relative_links(page):
        file, _, anchor = target.partition("#")
        if not resolved.exists():
            yield f"{where}: link to {target}: no file {file}"
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            yield f"{where}: link to {target}: {resolved.name} has no heading #{anchor}"


def test_links_between_pages_resolve() -> None:
    problems = [problem for path in PAGES for problem in link_problems(read_page(path))]
    assert not problems, "\n".join(problems)


def test_linked_configuration_files_validate() -> None:
    linked = {
        resolved
        for path in PAGES
        for _, _, resolved in relative_links(read_page(path))
        if resolved.suffix == ".yaml" and resolved.is_file()
    }
    assert linked, "no page links to a configuration file"
    problems = []
    for file in sorted(linked):
        try:
            load_config(file, manager=manager_for_pages())
        except ConfigError as exc:
            problems += [str(issue) for issue in exc.issues]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- the checks themselves
BROKEN_PAGE = """# Broken

Set `trainer.pakcing`, see [this](#no-such-heading), [that](missing.md) and [ok](#a-heading).

```yaml
trainer:
  max_stepz: 3
```

```bash
lightrft trian --config run.yaml
lightrft train --confg run.yaml trainer.max_stepz=3
lightrft config validate examples/no_such.yaml
```

## A heading

| key | default | meaning |
|---|---|---|
| `trainer.max_steps` | `50` | RL steps |
| `clip_eps_hihg` | `0.2` | clip range |
"""


def test_each_check_finds_its_mistake(tmp_path: Path) -> None:
    path = tmp_path / "broken.md"
    path.write_text(BROKEN_PAGE, encoding="utf-8")
    page = read_page(path)
    assert key_problems(page) == ["broken.md:3: unknown configuration key trainer.pakcing"]
    assert configuration_problems(page, tmp_path) == [
        "broken.md:7: trainer.max_stepz: unknown key; did you mean 'trainer.max_steps'?"
    ]
    assert command_problems(page) == [
        "broken.md:11: 'lightrft' has no command 'trian'",
        "broken.md:12: 'lightrft train' has no option --confg",
        "broken.md:12: unknown configuration key trainer.max_stepz",
        "broken.md:13: no file examples/no_such.yaml",
    ]
    assert list(option_table_problems(page)) == [
        "broken.md:20: trainer.max_steps defaults to 100, not 50",
        "broken.md:21: clip_eps_hihg is no core key nor an option of the page's components",
    ]
    assert list(link_problems(page)) == [
        "broken.md:3: link to #no-such-heading: broken.md has no heading #no-such-heading",
        "broken.md:3: link to missing.md: no file missing.md",
    ]
