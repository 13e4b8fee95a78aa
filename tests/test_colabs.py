"""Every notebook in colabs/ runs headless, top to bottom, in a real Jupyter kernel (nbclient),
at the tiny preset, in a fresh virtual environment that holds only ipykernel until the
notebook's own install cell installs pruneax from the wheel of this tree (its one setting,
``PRUNEAX_SOURCE``, pointed at the wheel), as it would in Colab (tests/_notebooks.py). A tiny
experiment runs from the same installed wheel. Committed notebooks carry no outputs.

Notebooks 03, 04 and 06 run the ViT, Vision Mamba and VLM experiments; their outputs are what
tests/test_vit_token_pruning.py, test_ssm_token_pruning.py and test_vlm_token_pruning.py check
(the ``notebook_run`` fixture runs each notebook once per session).
"""

import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from tests._notebooks import NOTEBOOKS, installed_from_the_wheel  # noqa: E402
from tests._wheel import run  # noqa: E402


def test_the_five_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    for expected in (
        "01_token_transforms",
        "02_lottery_tickets",
        "03_vit_token_pruning",
        "04_ssm_alignment",
        "05_hf_import_and_prune",
        "06_vlm_token_pruning",
    ):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


def _install_cell(path: pathlib.Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_every_notebook_installs_pruneax_the_same_way():
    cells = {_install_cell(p) for p in NOTEBOOKS}
    assert len(cells) == 1, "the notebooks' install cells differ"
    (cell,) = cells
    assert "PRUNEAX_SOURCE" in cell and "pruneax[experiments] @" in cell
    assert "placeholder" not in cell and "chdir" not in cell


# the notebooks that run an experiment, which writes its results.json into the run's folder
EXPERIMENTS = {"02_lottery_tickets", "03_vit_token_pruning", "04_ssm_alignment",
               "06_vlm_token_pruning"}  # fmt: skip


def test_first_notebook_installs_the_wheel_and_an_experiment_runs_from_it(
    wheel_kernel, notebook_run, tmp_path
):
    """01's install cell installs pruneax[experiments] from the wheel into the kernel's
    environment; the tiny reproduction of token_demo then runs from the installed package."""
    notebook_run("01_token_transforms")  # run while the kernel was built
    assert installed_from_the_wheel(wheel_kernel, tmp_path)
    out = run(
        [wheel_kernel["python"], "-m", "pruneax.experiments.reproduce", "--only", "token_demo",
         "--workdir", tmp_path / "reproduce", "--compilation_cache", "off"],
        tmp_path,
    )  # fmt: skip
    assert re.search(r"token_demo \(preset \w+\): done", out), out[-2000:]
    assert (tmp_path / "reproduce" / "report.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_notebook_runs_from_the_installed_wheel(path, wheel_kernel, notebook_run, tmp_path):
    """Each other notebook, top to bottom, in the same kernel (the experiment notebooks may
    already have run for the experiments' own tests: once per session)."""
    runs = notebook_run(path.stem)
    assert installed_from_the_wheel(wheel_kernel, tmp_path)
    if path.stem in EXPERIMENTS:
        assert (runs / path.stem / "results.json").is_file()
