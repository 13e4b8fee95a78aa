"""Data parallelism on 8 (fake CPU) devices equals 1 device; checkpoints move between the two.

Each case runs in a subprocess because the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

TRAIN = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from experiments import vit_token_pruning as vtp
    from pruneax.models import PruningPlan

    cfg = dataclasses.replace(vtp.PRESETS["tiny"], iterations=30, warmup=5, log_every=10)
    cfg, arrays = vtp._prepare(cfg, None)
    runner = vtp._runner(cfg, vtp._vit_config(cfg, arrays))
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    from pathlib import Path
    ckpt = None if sys.argv[1] == "-" else vtp.common.Checkpoints(Path(sys.argv[1]))
    params, losses = runner.train(runner.params0, data, steps=30, lr=3e-3, warmup=5, plan=None,
                                  ckpt=ckpt, tag="t", augment=False)
    plan = PruningPlan.at(2, 0.5, "topk")
    acc = runner.accuracy(params, data["x_test"][:200], data["y_test"][:200], plan, 64)
    print(json.dumps({
        "devices": len(jax.devices()),
        "losses": [l for _, l in losses],
        "accuracy": acc,
        "leaves": [float(np.asarray(v, np.float64).sum()) for v in jax.tree.leaves(params)],
        "sharding": str(jax.tree.leaves(params)[0].sharding),
    }))
    """
)


def _run(code: str, devices: int, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single():
    return _run(TRAIN, 1, "-")


def test_eight_devices_train_and_evaluate_like_one(single, tmp_path):
    eight = _run(TRAIN, 8, str(tmp_path / "ckpt"))
    assert single["devices"] == 1 and eight["devices"] == 8
    assert "8" in eight["sharding"] or "Named" in eight["sharding"]
    # same program, the batch split 8 ways: only the reduction order differs
    np.testing.assert_allclose(eight["losses"], single["losses"], rtol=2e-4)
    np.testing.assert_allclose(eight["leaves"], single["leaves"], rtol=1e-3, atol=1e-3)
    assert abs(eight["accuracy"] - single["accuracy"]) <= 0.02


def test_checkpoint_written_on_eight_devices_restores_on_one(tmp_path):
    ckpt = tmp_path / "ckpt"
    eight = _run(TRAIN, 8, str(ckpt))
    # the one-device run finds the finished checkpoint (step 30) and resumes there: no training
    one = _run(TRAIN, 1, str(ckpt))
    assert one["devices"] == 1
    assert one["losses"] == eight["losses"]  # read back from the checkpoint's metadata
    np.testing.assert_array_equal(one["leaves"], eight["leaves"])  # restored bit for bit
    assert one["accuracy"] == pytest.approx(eight["accuracy"], abs=0.01)


SELECT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec
    import pruneax.tokens as T
    from experiments import _parallel as par

    mesh = par.data_mesh()
    x = par.shard_batch(jax.random.normal(jax.random.key(0), (16, 49, 8)), mesh)
    scores = par.shard_batch(jax.random.uniform(jax.random.key(1), (16, 49)), mesh)
    top = jax.jit(jax.vmap(lambda s: T.topk(s, 5)))(scores)
    div = jax.jit(jax.vmap(lambda f: T.maxmin_diversity(f, 5)))(x)
    want = NamedSharding(mesh, PartitionSpec("data"))
    print(json.dumps({
        "top_sharded": top.sharding.is_equivalent_to(want, 2),
        "div_sharded": div.sharding.is_equivalent_to(want, 2),
        "top": top.tolist(), "div": div.tolist(),
    }))
    """
)


def test_selectors_keep_the_batch_sharding():
    eight = _run(SELECT, 8)
    one = _run(SELECT, 1)
    assert eight["top_sharded"] and eight["div_sharded"]
    assert eight["top"] == one["top"] and eight["div"] == one["div"]


def test_shard_batch_refuses_an_indivisible_batch():
    code = textwrap.dedent(
        """
        import jax.numpy as jnp
        from experiments import _parallel as par
        try:
            par.shard_batch(jnp.zeros((6, 2)), par.data_mesh())
        except ValueError as e:
            print('{"error": "%s"}' % str(e).replace('"', "'"))
        """
    )
    out = _run(code, 8)
    assert "not a multiple of the 8 devices" in out["error"]
