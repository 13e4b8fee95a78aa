"""Smoke run of the lottery-ticket experiment, and kill-and-resume giving identical results."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal

import numpy as np
import pytest

from pruneax.experiments import lottery_ticket as lt
from tests._resume import kill_after_first_checkpoint
from tests._tensorboard import scalars as tensorboard_scalars

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--preset", "tiny", "--rounds", "2", "--iterations", "100"]


def _config():
    return dataclasses.replace(lt.PRESETS["tiny"], rounds=2, iterations=100)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lt_reference")
    out = lt.main([*ARGS, "--workdir", str(workdir)])
    return workdir, out


def test_outputs_and_structure(reference):
    workdir, out = reference
    for name in ("results.json", "results.csv", "lottery_ticket.png"):
        assert (workdir / name).stat().st_size > 0, name
    rows = out["results"]
    assert [(r["kind"], r["round"]) for r in rows] == [
        ("imp", 0),
        ("imp", 1),
        ("reinit", 1),
        ("random_prune", 1),
        ("imp", 2),
        ("reinit", 2),
        ("random_prune", 2),
    ]
    imp = [r["remaining"] for r in rows if r["kind"] == "imp"]
    assert imp[0] == 100.0 and imp[0] > imp[1] > imp[2]
    # 20% of the remaining per round in the hidden layers, 10% in the output layer
    assert 78 < imp[1] < 82 and 62 < imp[2] < 66
    for r in rows:  # baselines train at exactly the sparsity of their IMP round
        same = [x["remaining"] for x in rows if x["round"] == r["round"]]
        assert len(set(same)) == 1
        assert 0.5 < r["final_test_acc"] <= 1.0  # it learned the digits
        assert r["early_stop_iteration"] in {c[0] for c in r["curve"]}
    header = (workdir / "results.csv").read_text().splitlines()[0]
    assert "early_stop_test_acc" in header and "remaining" in header


def test_tensorboard_curves_equal_the_results(reference):
    """Each job's validation curve (by iteration) and its test accuracies (by round) are in
    <workdir>/tensorboard with the numbers of results.json."""
    workdir, out = reference
    scalars = tensorboard_scalars(workdir / "tensorboard")
    assert out["results"]
    for row in out["results"]:
        run = f"seed{row['seed']}/{row['kind']}"
        curve = scalars[f"{run}_r{row['round']}/val_acc"]
        assert [s for s, _ in curve] == [c[0] for c in row["curve"]]
        np.testing.assert_allclose([v for _, v in curve], [c[2] for c in row["curve"]], rtol=1e-6)
        final = dict(scalars[f"{run}/final_test_acc_by_round"])
        assert final[row["round"]] == pytest.approx(row["final_test_acc"], rel=1e-6)


def test_killed_run_resumes_with_identical_results(reference, tmp_path):
    _, want = reference
    workdir = tmp_path / "killed"
    returncode = kill_after_first_checkpoint(
        "pruneax.experiments.lottery_ticket", ARGS, workdir, workdir / "checkpoints"
    )
    assert returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()

    got = lt.main([*ARGS, "--workdir", str(workdir)])
    assert got["results"] == want["results"]  # bit-identical floats, same order
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["results"] == want["results"]


def test_resume_refuses_a_different_config(reference, tmp_path):
    workdir, _ = reference
    other = dataclasses.replace(_config(), rate=0.5)
    with pytest.raises(ValueError, match="different config"):
        lt.run(other, workdir)


def test_plot_values_match_results(reference):
    _, out = reference
    dense = next(r for r in out["results"] if r["kind"] == "imp" and r["round"] == 0)
    curve = dense["curve"]
    best = int(np.argmin([row[1] for row in curve]))
    assert dense["early_stop_test_acc"] == curve[best][3] is not None
    assert dense["final_test_acc"] == curve[-1][3] is not None
    # test accuracy is evaluated exactly at the new validation minima and at the end
    running = np.minimum.accumulate([row[1] for row in curve])
    for i, row in enumerate(curve):
        new_min = i == 0 or row[1] < running[i - 1]
        assert (row[3] is not None) == (new_min or i == len(curve) - 1)


def test_summarize_merges_runs(reference, tmp_path):
    workdir, out = reference
    text = lt.summarize([str(workdir)], str(tmp_path / "summary"))
    table = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert len(table) == 3  # rounds 0, 1, 2
    dense = next(r for r in out["results"] if r["kind"] == "imp" and r["round"] == 0)
    assert f"{dense['early_stop_test_acc']:.4f}" in table[0]
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_compare_rewind_puts_runs_side_by_side(reference, tmp_path):
    workdir, out = reference
    data = json.loads((workdir / "results.json").read_text())
    dirs = []
    for rw, shift in ((0, 0.0), (50, 0.01)):
        d = tmp_path / f"rw{rw}"
        d.mkdir()
        cfg = {**data["config"], "rewind_iteration": rw}
        rows = [{**r, "final_test_acc": r["final_test_acc"] - shift} for r in data["results"]]
        (d / "results.json").write_text(json.dumps({"config": cfg, "results": rows}))
        dirs.append(str(d))
    text = lt.compare_rewind(dirs, str(tmp_path / "cmp"))
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert "IMP rw0" in text and "random prune rw50" in text
    imp1 = next(r for r in out["results"] if r["kind"] == "imp" and r["round"] == 1)
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert f"{imp1['final_test_acc']:.4f}" in row and f"{imp1['final_test_acc'] - 0.01:.4f}" in row
    bad = json.loads((tmp_path / "rw50" / "results.json").read_text())
    bad["config"]["rate"] = 0.5
    (tmp_path / "rw50" / "results.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="differ only in rewind_iteration"):
        lt.compare_rewind(dirs, str(tmp_path / "cmp2"))


def _resnet_config():
    # ResNet-20 (BatchNorm) at width 4 on the 8x8 digits, with augmentation: a handful of steps
    return dataclasses.replace(
        lt.PRESETS["cpu_rewind_resnet"],
        dataset="digits",
        width=4,
        iterations=4,
        eval_every=2,
        val_size=100,
        batch_size=16,
    )


@pytest.mark.slow  # ~60 s (the scan loop with batch norm compiles slowly on XLA:CPU)
def test_batchnorm_trains_and_both_step_loops_agree():
    import jax
    from flax import nnx

    cfg = _resnet_config()
    data = {k: jax.numpy.asarray(v) for k, v in lt.prepare(cfg, None).items()}
    runs = {}
    for loop in ("scan", "python"):
        model = lt.make_model(cfg, data["x_train"].shape[1:], jax.random.key(0))
        trainer = lt.Trainer(cfg, model, loop=loop)
        assert trainer.loop == loop
        _, params, rest = nnx.split(model, nnx.Param, ...)
        masks = jax.tree.map(lambda p: None, params)
        runs[loop] = trainer.train(params, rest, masks, data, jax.random.key(1), 0)
    (p_scan, r_scan, c_scan, _), (p_py, r_py, c_py, _) = runs["scan"], runs["python"]
    # the running statistics moved away from their initial values (mean 0, var 1)
    means = [np.asarray(v) for k, v in nnx.to_flat_state(r_scan) if k[-1] == "mean"]
    assert means and all(np.abs(m).max() > 1e-4 for m in means)
    for a, b in zip(jax.tree.leaves((p_scan, r_scan)), jax.tree.leaves((p_py, r_py)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [row[1] for row in c_scan], [row[1] for row in c_py], rtol=1e-4, atol=1e-5
    )


def test_trainer_loop_choice():
    import jax

    cfg = _resnet_config()
    model = lt.make_model(cfg, (8, 8, 1), jax.random.key(0))
    expected = "python" if jax.default_backend() == "cpu" else "scan"
    assert lt.Trainer(cfg, model).loop == expected
    lenet = dataclasses.replace(cfg, model="lenet300100")
    assert lt.Trainer(lenet, lt.make_model(lenet, (8, 8, 1), jax.random.key(0))).loop == "scan"
    with pytest.raises(ValueError, match="loop must be"):
        lt.Trainer(cfg, model, loop="unrolled")
