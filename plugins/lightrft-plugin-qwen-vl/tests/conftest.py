"""``family_dir``: the tiny folder of each family (fixtures of the plugin's testing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

FAMILY_FIXTURES = {
    "qwen2_vl": "tiny_qwen_vl_dir",
    "qwen2_5_vl": "tiny_qwen2_5_vl_dir",
    "qwen3_vl": "tiny_qwen3_vl_dir",
}


@pytest.fixture(scope="module", params=list(FAMILY_FIXTURES))
def family_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(FAMILY_FIXTURES[request.param])
