#!/usr/bin/env python3
"""Set the version of every first-party package (they are released in lockstep).

Usage: python scripts/set_version.py 0.2.0

Rewrites lightrft_core/_version.py, every plugins/*/src/*/_version.py, and the compatible
``lightrft-core`` range each plugin depends on. tests/test_versions.py fails on drift.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lightrft_core.plugins import core_requirement  # noqa: E402

VERSION_RE = re.compile(r'^__version__ = "[^"]*"$', re.MULTILINE)
CORE_REQ_RE = re.compile(r'"lightrft-core[^"]*"')


def version_files() -> list[Path]:
    return [
        ROOT / "lightrft_core" / "_version.py",
        *sorted(ROOT.glob("plugins/*/src/*/_version.py")),
    ]


def main(version: str) -> None:
    if not re.fullmatch(r"\d+\.\d+\.\d+([a-z]+\d+)?", version):
        sys.exit(f"not a version: {version!r} (expected e.g. 0.2.0)")
    for path in version_files():
        path.write_text(VERSION_RE.sub(f'__version__ = "{version}"', path.read_text()))
        print(f"{path.relative_to(ROOT)}: {version}")
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        text = CORE_REQ_RE.sub(f'"{core_requirement(version)}"', pyproject.read_text())
        pyproject.write_text(text)
        print(f"{pyproject.relative_to(ROOT)}: {core_requirement(version)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
