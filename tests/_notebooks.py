"""The notebooks in colabs/, executed as a Colab user would run them: in a fresh virtual
environment that holds only ipykernel until a notebook's own install cell installs pruneax from
the wheel of this tree (its one setting, ``PRUNEAX_SOURCE``, pointed at the wheel).

``conftest.py`` makes one such kernel per test session (``wheel_kernel``, whose notebook 01
installs pruneax) and runs each notebook at most once (``notebook_run``), shared by the
pytest-xdist workers (the ``once`` fixture): tests/test_colabs.py checks the notebooks, and the
tests of the ViT, Vision Mamba and VLM experiments check the outputs that notebooks 03, 04 and 06
wrote, so the experiments' tiny runs are not computed twice.
"""

from __future__ import annotations

import json
import pathlib
import venv

import pytest

from tests._wheel import ROOT, build_wheel, run

NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


def make_kernel(base: pathlib.Path) -> dict:
    """A fresh virtual environment with ipykernel only, registered as the Jupyter kernel
    ``pruneax-wheel``; pruneax is NOT installed: the first notebook's install cell does it."""
    wheel = build_wheel(base)
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "ipykernel>=6.29"], base)
    run([py, "-m", "ipykernel", "install", "--prefix", env_dir, "--name", "pruneax-wheel"], base)
    spec = json.loads((env_dir / "share/jupyter/kernels/pruneax-wheel/kernel.json").read_text())
    assert spec["argv"][0].startswith(str(env_dir))
    return {"env": env_dir, "python": py, "wheel": wheel, "jupyter": env_dir / "share/jupyter"}


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


def execute(path: pathlib.Path, kernel: dict, workdir: pathlib.Path) -> pathlib.Path:
    """Runs notebook ``path`` top to bottom in the kernel at the tiny preset; returns the folder
    its experiments wrote to (``PRUNEAX_WORKDIR``: ``<workdir>/runs``)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    workdir.mkdir(parents=True, exist_ok=True)
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
    with pytest.MonkeyPatch.context() as mp:
        # the kernel inherits this process's environment: nothing of the repository's on its path
        for key in ("PYTHONPATH", "VIRTUAL_ENV", "PRUNEAX_DATA_DIR"):
            mp.delenv(key, raising=False)
        for key, value in settings.items():
            mp.setenv(key, value)
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=900,
            kernel_name="pruneax-wheel",
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()  # raises CellExecutionError naming the failing cell
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, (path.name, errors)
    return workdir / "runs"


def installed_from_the_wheel(kernel: dict, cwd: pathlib.Path) -> bool:
    """Whether the kernel's ``import pruneax`` finds the copy installed in its environment."""
    where = run([kernel["python"], "-c", "import pruneax; print(pruneax.__file__)"], cwd)
    return where.strip().startswith(str(kernel["env"]))
