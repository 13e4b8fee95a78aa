"""The README's usage example runs and does what its comments say."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    keep, x_kept = np.asarray(scope["keep"]), np.asarray(scope["x_kept"])
    assert keep.shape == (8, 65) and x_kept.shape == (8, 65, 1024)
    assert (keep[:, 0] == 0).all()  # CLS kept
    assert (np.diff(keep, axis=1) > 0).all()  # sorted, unique
    np.testing.assert_array_equal(x_kept[3], np.asarray(scope["x"])[3][keep[3]])


def test_readme_graph_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(blocks[1], str(README), "exec"), scope)
    graph, g, keep, state, x = (scope[k] for k in ("graph", "g", "keep", "state", "x"))
    assert sorted(grp.size for grp in g.prunable()) == [100, 300]
    assert graph.flops(g, keep) <= 0.5 * graph.flops(g)
    masked = scope["fn"](graph.mask(g, state, keep), x)
    np.testing.assert_allclose(np.asarray(scope["logits"]), np.asarray(masked), atol=1e-5)


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    text = README.read_text()
    marker = text.index("<!-- test-command")
    command = re.search(r"```bash\n\s*(.+)\n", text[marker:]).group(1)
    assert "pytest" in command and "pip install" in command and "venv" in command
    assert "test-command" in ci  # .ci/run extracts that very line
