"""Smoke run of the ViT token-pruning experiment; kill-and-resume gives identical results."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal

import numpy as np
import pytest

from pruneax import models
from pruneax.experiments import vit_token_pruning as vtp
from pruneax.models.vit import vit_flops
from tests._resume import kill_after_first_checkpoint
from tests._tensorboard import scalars as tensorboard_scalars

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--preset", "tiny"]


@pytest.fixture(scope="module")
def reference(notebook_run):
    """The tiny run of colabs/03_vit_token_pruning.ipynb, executed in a fresh kernel from the wheel
    of this tree (tests/_notebooks.py): its folder and its results.json."""
    workdir = notebook_run("03_vit_token_pruning") / "03_vit_token_pruning"
    return workdir, json.loads((workdir / "results.json").read_text())


def test_outputs_and_structure(reference):
    workdir, out = reference
    for name in ("results.json", "results.md", "accuracy.png", "speedup.png", "kept_patches.png"):
        assert (workdir / name).stat().st_size > 0, name
    cfg = vtp.PRESETS["tiny"]
    evals = out["evals"]
    assert evals["dense@L0:1.0"]["accuracy"] > 0.5  # it learned the digits (chance 0.1)
    for m in cfg.methods:
        for r in cfg.keep_ratios:
            e = evals[f"{m}@L{cfg.prune_layers[0]}:{r}"]
            assert "accuracy" in e or "skipped" in e, e
            if "accuracy" in e:
                assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 < e["flops_ratio"] < 1.0
                t = out["throughput"][f"{m}@L{cfg.prune_layers[0]}:{r}"]
                assert t["images_per_s"] > 0 and t["ideal_speedup"] > 1.0
    assert len(out["finetune"]) == cfg.finetune_top
    table = (workdir / "results.md").read_text()
    assert "Training-free accuracy" in table and "Fine-tuned" in table
    assert "| flowcut |" in table


def test_flowcut_entries(reference):
    """FlowCut ran beside the one-stage methods at the same layer and keep ratio: its FLOPs are
    top-k's (all tokens before the layer, 1 + k after), its accuracy a real measurement."""
    _, out = reference
    cfg = vtp.PRESETS["tiny"]
    assert "flowcut" in cfg.methods
    layer, r = cfg.prune_layers[0], cfg.keep_ratios[0]
    e, top = out["evals"][f"flowcut@L{layer}:{r}"], out["evals"][f"topk@L{layer}:{r}"]
    c = models.ViTConfig(**out["vit"])
    n, k = c.num_patches, round(r * c.num_patches)
    assert e["block_tokens"] == [[1 + n] * 2] * layer + [[1 + k] * 2] * (c.num_layers - layer)
    assert e["flops_ratio"] == top["flops_ratio"]
    plan = vtp.make_plan("flowcut", layer, r, c)
    assert e["flops_ratio"] == pytest.approx(vit_flops(c, plan) / vit_flops(c))
    assert e["flops_ratio"] < 1.0
    # a measured accuracy on the eval images: a multiple of 1 / eval_size, well above chance
    assert e["accuracy"] * cfg.eval_size == pytest.approx(round(e["accuracy"] * cfg.eval_size))
    assert 0.3 < e["accuracy"] <= 1.0
    t = out["throughput"][f"flowcut@L{layer}:{r}"]
    assert t["ideal_speedup"] == pytest.approx(1 / e["flops_ratio"]) and t["images_per_s"] > 0
    # VisionDrop's vision stage keeps k tokens (dominant + contextual) from the same layer
    vd = out["evals"][f"visiondrop@L{layer}:{r}"]
    assert vd["flops_ratio"] == top["flops_ratio"] and 0.0 <= vd["accuracy"] <= 1.0


def test_flops_and_token_counts():
    c = models.vit_config("mnist/4")  # 49 patches + CLS, 6 blocks
    plan = vtp.make_plan("topk", 3, 0.5, c)
    assert vtp.block_tokens(plan, c) == [[50, 50]] * 3 + [[26, 26]] * 3
    # EViT fuses inside block 2, after its attention: block 2's MLP already runs on 26 + 1
    evit = vtp.block_tokens(vtp.make_plan("evit", 3, 0.5, c), c)
    assert evit[2:] == [[50, 27], [27, 27], [27, 27], [27, 27]]
    d, m = c.hidden_size, c.mlp_dim
    per_block = lambda t: 2 * (4 * t * d * d + 2 * t * t * d + 2 * t * d * m)
    dense = vit_flops(c)
    outside = dense - 6 * per_block(50)  # patch embedding + head: the same for every plan
    assert vit_flops(c, plan) == outside + 3 * per_block(50) + 3 * per_block(26)
    tome = vtp.make_plan("tome", 3, 0.3, c)  # 49 -> 25 -> 15, merged inside blocks 2 and 3
    assert vtp.block_tokens(tome, c) == [[50, 50], [50, 50], [50, 26], [26, 16], [16, 16], [16, 16]]
    attn_mlp = lambda ta, tm: 2 * (4 * ta * d * d + 2 * ta * ta * d) + 4 * tm * d * m
    assert vit_flops(c, tome) == outside + sum(attn_mlp(a, b) for a, b in vtp.block_tokens(tome, c))
    with pytest.raises(ValueError):  # 49 -> 5 needs four merging blocks; only three follow
        vtp.make_plan("tome", 3, 0.1, c)
    # FlowCut scores after blocks 0-2 (dead tokens only masked: no saving), leaves 25 before
    # block 3: the same blocks' tokens and FLOPs as top-k there
    flow = vtp.make_plan("flowcut", 3, 0.5, c)
    assert [s.layer for s in flow.stages] == [1, 2, 3] and flow.stages[-1].select_layer == 3
    assert vtp.block_tokens(flow, c) == vtp.block_tokens(plan, c)
    assert vit_flops(c, flow) == vit_flops(c, plan)
    with pytest.raises(ValueError, match="one prefix token"):  # no CLS to score with
        vtp.make_plan(
            "flowcut", 3, 0.5, models.vit_config("mnist/4", class_token=False, pool="mean")
        )


# slow (~100 s on a 2-core CPU): the default selection keeps the resume tests of
# lottery_ticket, instability and vlm_token_pruning
@pytest.mark.slow
def test_killed_run_resumes_with_identical_results(reference, tmp_path):
    _, want = reference
    workdir = tmp_path / "killed"
    returncode = kill_after_first_checkpoint(
        "pruneax.experiments.vit_token_pruning", ARGS, workdir, workdir / "checkpoints" / "train"
    )
    assert returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()

    vtp.main([*ARGS, "--workdir", str(workdir)])
    got = json.loads((workdir / "results.json").read_text())  # as the reference: its JSON
    assert got["train_losses"] == want["train_losses"]
    assert got["evals"] == want["evals"]  # same accuracies: same trained weights
    assert got["finetune"] == want["finetune"]


def test_resume_refuses_a_different_config(reference):
    workdir, _ = reference
    other = dataclasses.replace(vtp.PRESETS["tiny"], keep_ratios=(0.7,))
    with pytest.raises(ValueError, match="different config"):
        vtp.run(other, workdir)


def test_unknown_method_is_refused(tmp_path):
    bad = dataclasses.replace(vtp.PRESETS["tiny"], methods=("topk", "magic"))
    with pytest.raises(ValueError, match="magic"):
        vtp.run(bad, tmp_path)


def _fake_mnist(root: pathlib.Path, n_train: int = 8, n_test: int = 48) -> None:
    """The four MNIST IDX files (gzipped) with random 28x28 digits."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(root / "mnist" / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(root / "mnist" / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())


def test_pretrained_preset_loads_a_lucidrains_checkpoint(tmp_path):
    """The pretrained_mnist preset on a random-weight checkpoint of the lucidrains layout
    (D 16, 2 heads of width 12, 3 blocks) at the default place under the data directory:
    nothing is trained, the dense accuracy is that model's own on the normalised images."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from pruneax.data import load_mnist

    _fake_mnist(tmp_path)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.5
    d, inner, m = 16, 24, 32
    sd = {"pos_embedding": r(1, 50, d), "cls_token": r(1, 1, d)}
    sd |= {"to_patch_embedding.1.weight": r(d, 16), "to_patch_embedding.1.bias": r(d)}
    for i in range(3):
        p = f"transformer.layers.{i}."
        sd |= {p + "0.norm.weight": 1 + r(d), p + "0.norm.bias": r(d)}
        sd |= {p + "0.fn.to_qkv.weight": r(3 * inner, d), p + "0.fn.to_out.0.weight": r(d, inner)}
        sd |= {p + "0.fn.to_out.0.bias": r(d), p + "1.norm.weight": 1 + r(d)}
        sd |= {p + "1.norm.bias": r(d), p + "1.fn.net.0.weight": r(m, d)}
        sd |= {p + "1.fn.net.0.bias": r(m), p + "1.fn.net.3.weight": r(d, m)}
        sd |= {p + "1.fn.net.3.bias": r(d)}
    sd |= {"mlp_head.0.weight": 1 + r(d), "mlp_head.0.bias": r(d)}
    sd |= {"mlp_head.1.weight": r(10, d), "mlp_head.1.bias": r(10)}
    path = tmp_path.joinpath(*vtp.PRETRAINED_RELATIVE)
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    cfg = dataclasses.replace(
        vtp.PRESETS["pretrained_mnist"], vit=(("num_heads", 2), ("patch_size", 4)),
        methods=("random", "topk", "tome"), keep_ratios=(0.5,), prune_layers=(1,),
        eval_size=48, eval_batch=16, throughput_batch=16, throughput_repeats=1,
        throughput_iters=1,
    )  # fmt: skip
    out = vtp.run(cfg, tmp_path / "work", str(tmp_path))
    assert out["train_losses"] == [] and out["finetune"] == {}
    assert out["vit"]["attention_head_dim"] == 12 and out["vit"]["hidden_act"] == "relu"
    model = models.load_lucidrains_vit(path, num_heads=2, image_size=28, patch_size=4)
    ds = load_mnist(tmp_path)
    x = ((ds.test_images.astype(np.float32) / 255 - 0.1307) / 0.3081)[..., None]
    want = float(np.mean(np.argmax(model(x).logits, -1) == ds.test_labels))
    assert out["evals"]["dense@L0:1.0"]["accuracy"] == pytest.approx(want)
    assert {"random@L1:0.5", "topk@L1:0.5", "tome@L1:0.5"} <= set(out["evals"])
    claims = vtp.claims(out)
    assert all("trained elsewhere" in c.claim for c in claims)
    assert any("before block 1" in c.claim for c in claims)
    with pytest.raises(FileNotFoundError, match="pretrained checkpoint not found"):
        vtp.run(dataclasses.replace(cfg, checkpoint=str(tmp_path / "nope.pt")), tmp_path / "w2",
                str(tmp_path))  # fmt: skip


def test_tensorboard_curves_equal_the_results(reference):
    """lab.MetricWriter: the training loss curve and the accuracy-vs-keep curves in
    <workdir>/tensorboard hold the numbers of results.json."""
    workdir, out = reference
    scalars = tensorboard_scalars(workdir / "tensorboard")
    got = scalars["train/loss"]
    assert [s for s, _ in got] == [s for s, _ in out["train_losses"]]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in out["train_losses"]], rtol=1e-6)
    for e in out["evals"].values():
        if "accuracy" in e and e["method"] != "dense":
            tag = f"eval/{e['method']}_L{e['layer']}/accuracy_vs_keep_percent"
            assert (round(100 * e["ratio"]), pytest.approx(e["accuracy"])) in scalars[tag]
