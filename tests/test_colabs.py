"""Every notebook in colabs/ runs headless, top to bottom, in a real Jupyter kernel (nbclient),
at the tiny preset; committed notebooks carry no outputs."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

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


# 03 and 04 take 3-4 minutes each on a 2-core CPU and run the same experiment modules as
# tests/test_vit_token_pruning.py and test_ssm_token_pruning.py; 06 (~50 s) the same as
# test_vlm_token_pruning.py: in the slow selection.
HEAVY = {"03_vit_token_pruning", "04_ssm_alignment", "06_vlm_token_pruning"}
RUNS = [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p for p in NOTEBOOKS]


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEAX_PRESET", "tiny")
    monkeypatch.setenv("PRUNEAX_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.delenv("PRUNEAX_DATA_DIR", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    if "hf_import" in path.stem:
        monkeypatch.setenv("PRUNEAX_CHECKPOINT", str(_tiny_hf_vit(tmp_path / "hf_vit")))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
