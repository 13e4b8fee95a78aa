"""The built wheel installs into a fresh virtual environment outside the repository, and the
core install pulls no Flax: the README example runs from it. (The experiments and notebooks
from the wheel: tests/test_colabs.py.)"""

from __future__ import annotations

import re
import venv

from tests._wheel import ROOT, build_wheel, run


def test_core_wheel_installs_without_flax(tmp_path):
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "core"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", wheel], tmp_path)
    listed = run([py, "-m", "pip", "list", "--format=freeze"], tmp_path).lower()
    assert "flax==" not in listed and "jax==" in listed and "optax==" in listed
    readme = (ROOT / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    check = "\nprint(keep.shape)\nimport pruneax\nprint(pruneax.__file__)\n"
    (tmp_path / "example.py").write_text(example + check)
    shape, where = run([py, "example.py"], tmp_path).strip().splitlines()[-2:]
    assert shape == "(8, 65)"
    assert where.startswith(str(env_dir)), where  # the installed copy, not the repository's
