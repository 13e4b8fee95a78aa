"""docs/guide.md ("Prune the visual tokens of your own JAX model"): every example runs.

Each ```python block of the guide is a self-contained script ending in asserts; it runs in a
fresh namespace, so a block that leans on names from an earlier one fails here.
"""

import itertools
import pathlib
import re

import pytest

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide.md"
TEXT = GUIDE.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
FRAMEWORKS = ("plain JAX", "Flax linen", "Flax NNX", "Equinox")


def _headings() -> list[tuple[int, str]]:
    """(level, title) of every Markdown heading outside fenced code."""
    prose = re.sub(r"```.*?```", "", TEXT, flags=re.S)
    return [(len(m[1]), m[2].strip()) for m in re.finditer(r"^(#+)\s+(.+)$", prose, flags=re.M)]


def test_guide_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_guide_block_runs(block):
    exec(compile(block, "docs/guide.md", "exec"), {})


def test_guide_has_a_section_per_framework():
    sections = [title.lower() for level, title in _headings() if level == 2]
    for framework in FRAMEWORKS:
        assert any(framework.lower() in s for s in sections), f"no section for {framework}"


def test_guide_headings_start_at_one_title_and_never_skip():
    levels = [level for level, _ in _headings()]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels))
