"""experiments.graph_pruning: a minimal run end to end, its outputs, resume, claims, errors."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pruneax import graph as G
from pruneax.experiments import graph_pruning as gp
from tests._tensorboard import scalars as tensorboard_scalars

CFG = dataclasses.replace(
    gp.PRESETS["tiny"],
    iterations=30,
    finetune_iterations=6,
    amounts=(0.5,),
    methods=("global_l2", "masksparsity"),
    sparsity_iterations=8,
    weight_sparsities=(0.9,),
    eval_size=120,
    eval_batch=60,
    calib_batches=1,
    throughput_repeats=2,
    ckpt_every=20,
    log_every=20,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):  # trains and prunes for ~1.5 minutes: used by slow tests only
    workdir = tmp_path_factory.mktemp("gp")
    return workdir, gp.run(CFG, workdir)


@pytest.mark.slow
def test_tensorboard_curves_equal_the_results(result):
    """Every training loop's loss curve and the accuracy-vs-FLOPs points are in
    <workdir>/tensorboard, the points equal to results.json."""
    workdir, r = result
    scalars = tensorboard_scalars(workdir / "tensorboard")
    for tag in ("dense", "ft-global_l2@0.5", "reg-masksparsity@0.5", "iss_p@w0.9", "iht@w0.9"):
        assert scalars[re.sub(r"[^\w/.-]", "_", f"{tag}/loss")], tag  # TensorBoard's charset
    assert [s for s, _ in scalars["dense/loss"]] == [20, 30]  # log_every 20 and the last step
    for name, row in r["jobs"].items():
        if "flops_ratio" in row and "@w" not in name:
            points = dict(scalars[f"eval/{row['method']}/accuracy_vs_flops_permille"])
            got = points[round(1000 * row["flops_ratio"])]
            assert got == pytest.approx(row["accuracy"], rel=1e-6), name


@pytest.mark.slow
def test_outputs_budgets_and_claims(result):
    workdir, r = result[0], json.loads(json.dumps(result[1]))  # a copy: rows are popped
    assert {p.name for p in workdir.iterdir()} >= {
        "results.json",
        "results.csv",
        "graph_pruning.png",
    }
    assert json.loads((workdir / "results.json").read_text())["jobs"].keys() == r["jobs"].keys()
    assert len((workdir / "results.csv").read_text().strip().splitlines()) == 1 + 4
    dense = r["dense"]
    assert dense["prunable"] == 12 and dense["inexact"] == 0  # ResNet-20: 3 residual + 9 inner
    for method in ("iss_p", "iht"):  # unstructured: ceil(0.9 n) of every kernel is zero
        row = r["jobs"].pop(f"{method}@w0.9")
        assert 0.9 <= row["weight_sparsity"] < 0.91 and row["params"] < dense["params"]
        assert 0.0 <= row["accuracy"] <= 1.0 and row["flops_ratio"] == 1.0
    for name, row in r["jobs"].items():
        assert row["flops"] <= 0.5 * dense["flops"] + 1, name  # the budget is met
        assert row["params"] < dense["params"]
        assert 0.0 <= row["accuracy_before_ft"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["speedup"] > 0
    ms = r["jobs"]["masksparsity@0.5"]
    assert ms["gamma_after"] < ms["gamma_before"]  # the regularised scales shrank
    assert ms["channels_kept"] == r["jobs"]["global_l2@0.5"]["channels_kept"]  # same selection
    claims = gp.claims(result[1])  # SPA (no uniform_l1: not measured), MaskSparsity x 2,
    assert len(claims) == 5 and "50% of the FLOPs removed" in claims[0].claim  # ISS-P, speed
    assert "iterative soft shrinkage" in claims[3].claim and claims[3].verdict != "not measured"
    assert claims[0].verdict == "not measured"


@pytest.mark.slow
def test_a_finished_run_is_not_run_again(result, monkeypatch):
    workdir, r = result

    def boom(*a, **k):
        raise AssertionError("a finished job was pruned again")

    monkeypatch.setattr(G, "prune", boom)
    again = gp.run(CFG, workdir)
    assert again["jobs"] == r["jobs"] and again["dense"] == r["dense"]


def test_bad_config_is_refused(tmp_path):
    bad = (
        ("dataset", "imagenet"),
        ("methods", ("obspa",)),
        ("amounts", (1.0,)),
        ("weight_sparsities", (0.0,)),
        ("unstructured", ("snip",)),
        ("soft_fraction", 1.5),
    )
    for field, value in bad:
        with pytest.raises(ValueError, match=field):
            gp.run(dataclasses.replace(CFG, **{field: value}), tmp_path / field)


def test_uniform_selection_meets_the_flops_budget_and_global_uses_the_graph():
    import jax.numpy as jnp
    import numpy as np

    p = {"w1": jnp.arange(24.0).reshape(3, 8), "w2": jnp.ones((8, 8)), "w3": jnp.ones((8, 2))}
    g = G.trace(
        lambda p, x: jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]) @ p["w3"], p, jnp.ones((4, 3))
    )
    scores = {
        "global_l2": G.group_scores(g, p),
        "uniform_l1": G.group_scores(g, p, {k: jnp.abs(v) for k, v in p.items()}),
    }
    for amount in (0.3, 0.5):
        uni = gp.choose(CFG, "uniform_l1", amount, g, p, scores)
        assert G.flops(g, uni) <= (1 - amount) * G.flops(g)
        sizes = {len(v) for v in uni.values()}
        assert len(sizes) == 1 and len(uni) == 2  # the same fraction of both groups
        glob = gp.choose(CFG, "global_l2", amount, g, p, scores)
        ms = gp.choose(CFG, "masksparsity", amount, g, p, scores)  # the same channels
        direct = G.select(g, scores["global_l2"], amount, by="flops")
        assert glob.keys() == ms.keys() == direct.keys()
        assert all(
            np.array_equal(glob[k], ms[k]) and np.array_equal(glob[k], direct[k]) for k in glob
        )


def test_claims_compare_the_right_rows():
    row = lambda method, acc, before=0.5, speed=1.0: {
        "method": method, "amount": 0.5, "accuracy": acc, "accuracy_before_ft": before,
        "flops_ratio": 0.5, "speedup": speed,
    }  # fmt: skip
    r = {
        "config": {"dataset": "cifar10", "eval_size": 5000, "amounts": [0.5],
                   "weight_sparsities": [0.9]},
        "jobs": {
            "global_l2@0.5": row("global_l2", 0.60, before=0.30, speed=1.2),
            "uniform_l1@0.5": row("uniform_l1", 0.70),
            "masksparsity@0.5": row("masksparsity", 0.61, before=0.55),
            "iss_p@w0.9": row("iss_p", 0.62),
            "iht@w0.9": row("iht", 0.50),
        },
    }  # fmt: skip
    spa, ms_before, ms_after, iss, speed = gp.claims(r)
    assert spa.verdict == gp.lab.FAILS  # 60 vs 70 with n = 5000
    assert ms_before.verdict == gp.lab.HOLDS and "55.00 vs 30.00" in ms_before.measured
    assert ms_after.verdict == gp.lab.HOLDS  # 61 vs 60: not worse
    assert iss.verdict == gp.lab.HOLDS and speed.verdict == gp.lab.HOLDS
