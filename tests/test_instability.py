"""Instability analysis (linear mode connectivity): barrier, interpolation, outputs, resume."""

from __future__ import annotations

import dataclasses
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.experiments import instability as ins
from pruneax.experiments import lottery_ticket as lt
from tests._resume import kill_after_first_checkpoint
from tests._tensorboard import scalars as tensorboard_scalars

ARGS = ["--preset", "tiny", "--iterations", "120", "--spawn", "0", "40", "--copies", "3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("inst_reference")
    return workdir, ins.main([*ARGS, "--workdir", str(workdir)])


def test_error_barrier():
    assert ins.error_barrier([0.1, 0.1, 0.1]) == 0.0
    # highest point minus the mean of the ends, by hand
    assert ins.error_barrier([0.10, 0.50, 0.20]) == pytest.approx(0.50 - 0.15)
    # a path whose worst point is an end still counts the gap between the ends
    assert ins.error_barrier([0.10, 0.12, 0.30]) == pytest.approx(0.30 - 0.20)
    with pytest.raises(ValueError, match="errors must be"):
        ins.error_barrier([0.1])


def test_outputs_pairs_and_end_points(reference):
    workdir, out = reference
    for name in ("results.json", "results.csv", "instability.png"):
        assert (workdir / name).stat().st_size > 0, name
    assert [(r["spawn"], r["copy"]) for r in out["runs"]] == [
        (k, c) for k in (0, 40) for c in range(3)
    ]
    assert [(p["spawn"], p["copies"]) for p in out["pairs"]] == [
        (k, pair) for k in (0, 40) for pair in ([0, 1], [0, 2], [1, 2])
    ]
    final = {(r["spawn"], r["copy"]): r["final_test_acc"] for r in out["runs"]}
    for p in out["pairs"]:
        assert len(p["errors"]) == 11
        # the path's ends are the children themselves, evaluated as in training
        for c, e in zip(p["copies"], (p["errors"][0], p["errors"][-1]), strict=True):
            assert e == pytest.approx(1 - final[(p["spawn"], c)], abs=1e-6)
        assert p["barrier"] == pytest.approx(ins.error_barrier(p["errors"]))
    # children from one spawn point differ (their own SGD noise), so the analysis means something
    assert len({final[(0, c)] for c in range(3)} | {final[(40, c)] for c in range(3)}) > 1
    rows = (workdir / "results.csv").read_text().splitlines()
    assert rows[0].startswith("spawn,copy_a,copy_b,barrier") and len(rows) == 7
    assert [s["spawn"] for s in out["summary"]] == [0, 40]
    # TensorBoard (lab.MetricWriter): every run's curves, every pair's path, as in results.json
    scalars = tensorboard_scalars(workdir / "tensorboard")
    assert scalars["parent_to_40/val_loss"] and scalars["parent_to_40/test_acc"]
    for (k, c), acc in final.items():
        assert scalars[f"spawn{k}_copy{c}/test_acc"][-1][1] == pytest.approx(acc)
    for p in out["pairs"]:
        c1, c2 = p["copies"]
        got = scalars[f"spawn{p['spawn']}/copies{c1}_{c2}/test_error_vs_alpha_percent"]
        assert [s for s, _ in got] == [round(10 * i) for i in range(0, 11)]
        np.testing.assert_allclose([v for _, v in got], p["errors"], rtol=1e-6)


def test_killed_run_resumes_with_identical_results(reference, tmp_path):
    _, want = reference
    workdir = tmp_path / "killed"
    code = kill_after_first_checkpoint(
        "pruneax.experiments.instability", ARGS, workdir, workdir / "checkpoints"
    )
    assert code == -signal.SIGKILL and not (workdir / "results.json").exists()
    got = ins.main([*ARGS, "--workdir", str(workdir)])
    assert got["runs"] == want["runs"] and got["pairs"] == want["pairs"]


def test_a_network_interpolated_with_itself_is_flat():
    cfg = dataclasses.replace(lt.PRESETS["tiny"], iterations=10)
    data = {k: jnp.asarray(v) for k, v in lt.prepare(cfg, None).items()}
    model = lt.make_model(cfg, data["x_train"].shape[1:], jax.random.key(0))
    trainer = lt.Trainer(cfg, model)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    errors = ins.Interpolator(trainer, data, 2).errors((params, rest), (params, rest), 5)
    assert len(set(errors)) == 1


def test_batchnorm_statistics_are_reestimated():
    cfg = dataclasses.replace(
        lt.PRESETS["cpu_rewind_resnet"], dataset="digits", width=4, val_size=200
    )
    data = {k: jnp.asarray(v) for k, v in lt.prepare(cfg, None).items()}
    model = lt.make_model(cfg, data["x_train"].shape[1:], jax.random.key(0))
    trainer = lt.Trainer(cfg, model)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    interp = ins.Interpolator(trainer, data, 60)
    x = interp.bn_x[0]
    for _ in range(150):  # momentum 0.9: the running mean converges to this batch's mean
        rest = interp._stats(params, rest, x)
    # oracle: the first BatchNorm's input is the first convolution of the images
    features = np.asarray(model.conv(x)).reshape(-1, model.bn.num_features)
    np.testing.assert_allclose(
        np.asarray(rest["bn"]["mean"]), features.mean(0), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(rest["bn"]["var"]), features.var(0), rtol=1e-4, atol=1e-5)


def test_bad_arguments(tmp_path):
    cfg = dataclasses.replace(lt.PRESETS["tiny"], iterations=10)
    with pytest.raises(ValueError, match="spawn must be"):
        ins.run(cfg, tmp_path, spawn=(10,))
    with pytest.raises(ValueError, match="copies must be"):
        ins.run(cfg, tmp_path, copies=1)
    with pytest.raises(ValueError, match="points must be"):
        ins.run(cfg, tmp_path, points=2)
