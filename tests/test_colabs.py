"""Every notebook in colabs/ runs headless, top to bottom, in a real Jupyter kernel (nbclient),
at the tiny preset, in a fresh virtual environment that holds only ipykernel until the
notebook's own install cell installs pruneax from the wheel of the committed tree (its one
setting, ``PRUNEAX_SOURCE``, pointed at the wheel), as it would in Colab. A tiny experiment runs
from the same installed wheel. Committed notebooks carry no outputs.
"""

import json
import pathlib
import re
import venv

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from tests._wheel import build_wheel, run  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


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


def _tiny_hf_vit(directory: pathlib.Path) -> pathlib.Path:
    """A tiny random transformers ViTForImageClassification, saved as safetensors."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def _install_cell(path: pathlib.Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_every_notebook_installs_pruneax_the_same_way():
    cells = {_install_cell(p) for p in NOTEBOOKS}
    assert len(cells) == 1, "the notebooks' install cells differ"
    (cell,) = cells
    assert "PRUNEAX_SOURCE" in cell and "pruneax[experiments] @" in cell
    assert "placeholder" not in cell and "chdir" not in cell


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A fresh virtual environment with ipykernel only, registered as the Jupyter kernel
    ``pruneax-wheel``; pruneax is NOT installed: the first notebook's install cell does it."""
    base = tmp_path_factory.mktemp("kernel")
    wheel = build_wheel(base)
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "ipykernel>=6.29"], base)
    run([py, "-m", "ipykernel", "install", "--prefix", env_dir, "--name", "pruneax-wheel"], base)
    spec = json.loads((env_dir / "share/jupyter/kernels/pruneax-wheel/kernel.json").read_text())
    assert spec["argv"][0].startswith(str(env_dir))
    return {"env": env_dir, "python": py, "wheel": wheel, "jupyter": env_dir / "share/jupyter"}


def _execute(path: pathlib.Path, kernel: dict, workdir: pathlib.Path, monkeypatch) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this process's environment: nothing of the repository's on its path.
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PRUNEAX_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    settings = {
        "PRUNEAX_SOURCE": str(kernel["wheel"]),  # the install cell's one setting
        "PRUNEAX_PRESET": "tiny",
        "PRUNEAX_WORKDIR": str(workdir / "runs"),
        "JUPYTER_PATH": str(kernel["jupyter"]),
        "JAX_PLATFORMS": "cpu",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    if "hf_import" in path.stem:
        settings["PRUNEAX_CHECKPOINT"] = str(_tiny_hf_vit(workdir / "hf_vit"))
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="pruneax-wheel", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, (path.name, errors)
    monkeypatch.undo()


def _assert_installed_from_the_wheel(kernel: dict, cwd: pathlib.Path) -> None:
    where = run([kernel["python"], "-c", "import pruneax; print(pruneax.__file__)"], cwd)
    assert where.strip().startswith(str(kernel["env"])), where


# 03 and 04 take 3-4 minutes each on a 2-core CPU and run the same experiment modules as
# tests/test_vit_token_pruning.py and test_ssm_token_pruning.py; 06 (~50 s) the same as
# test_vlm_token_pruning.py: in the slow selection.
HEAVY = {"03_vit_token_pruning", "04_ssm_alignment", "06_vlm_token_pruning"}


def test_notebooks_and_an_experiment_run_from_the_installed_wheel(kernel, tmp_path, monkeypatch):
    """01 (whose install cell installs pruneax[experiments] from the wheel), then the tiny
    reproduction of token_demo from the installed package, then the other light notebooks.
    One test, so that the one kernel environment is built once whatever xdist does."""
    light = [p for p in NOTEBOOKS if p.stem not in HEAVY]
    assert light[0].stem == "01_token_transforms"
    _execute(light[0], kernel, tmp_path / light[0].stem, monkeypatch)
    _assert_installed_from_the_wheel(kernel, tmp_path)
    out = run(
        [kernel["python"], "-m", "pruneax.experiments.reproduce", "--only", "token_demo",
         "--workdir", tmp_path / "reproduce", "--compilation_cache", "off"],
        tmp_path,
    )  # fmt: skip
    assert re.search(r"token_demo \(preset \w+\): done", out), out[-2000:]
    assert (tmp_path / "reproduce" / "report.md").is_file()
    for path in light[1:]:
        _execute(path, kernel, tmp_path / path.stem, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in HEAVY], ids=lambda p: p.stem)
def test_heavy_notebook_runs_from_the_installed_wheel(path, kernel, tmp_path, monkeypatch):
    _execute(path, kernel, tmp_path / path.stem, monkeypatch)
    _assert_installed_from_the_wheel(kernel, tmp_path)
