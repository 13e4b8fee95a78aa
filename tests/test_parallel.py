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
from jax.sharding import PartitionSpec as P

ROOT = pathlib.Path(__file__).resolve().parents[1]

TRAIN = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from pruneax.experiments import vit_token_pruning as vtp
    from pruneax.models import PruningPlan

    cfg = dataclasses.replace(vtp.PRESETS["tiny"], iterations=30, warmup=5, log_every=10)
    cfg, arrays = vtp.prepare(cfg, None)
    runner = vtp.make_runner(cfg, vtp.model_config(cfg, arrays))
    data = {k: jnp.asarray(v) for k, v in arrays.items()}
    from pathlib import Path
    from pruneax.lab import Checkpoints
    ckpt = None if sys.argv[1] == "-" else Checkpoints(Path(sys.argv[1]))
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
    from pruneax import lab as par

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
        from pruneax import lab as par
        try:
            par.shard_batch(jnp.zeros((6, 2)), par.data_mesh())
        except ValueError as e:
            print('{"error": "%s"}' % str(e).replace('"', "'"))
        """
    )
    out = _run(code, 8)
    assert "not a multiple of the 8 devices" in out["error"]


LLM = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from pruneax.models import LlamaLM, llm_config
    from pruneax import lab as par
    from pruneax.weights import leaf_names

    cfg = llm_config("tiny", num_heads=4, num_kv_heads=2, hidden_size=64, intermediate_size=128)
    model = LlamaLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ids = jax.random.randint(jax.random.key(1), (4, 12), 0, cfg.vocab_size)

    @jax.jit
    def loss_and_logits(params, ids):
        def loss(p):
            logits = nnx.merge(graphdef, p)(ids).logits
            return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
                logits, ids[..., None], -1)[..., 0]), logits
        (l, logits), g = jax.value_and_grad(loss, has_aux=True)(params)
        return l, logits, g

    ref = jax.device_put(params, jax.devices()[0])
    l0, logits0, g0 = loss_and_logits(ref, ids)
    mesh = par.model_mesh(4)
    specs = par.llm_param_specs(params, mesh)
    sharded = par.shard_params(params, mesh, specs)
    l1, logits1, g1 = loss_and_logits(sharded, par.shard_batch(ids, mesh))
    flat = dict(zip(leaf_names(sharded), jax.tree.leaves(sharded)))
    q, o = flat["layers/0/self_attn/q_proj/kernel"], flat["layers/0/self_attn/o_proj/kernel"]
    k_, norm = flat["layers/0/self_attn/k_proj/kernel"], flat["norm/scale"]
    print(json.dumps({
        "mesh": dict(mesh.shape),
        "q_spec": str(q.sharding.spec), "o_spec": str(o.sharding.spec),
        "k_spec": str(k_.sharding.spec), "norm_spec": str(norm.sharding.spec),
        "q_shard_cols": q.addressable_shards[0].data.shape[1], "q_cols": q.shape[1],
        "loss_diff": float(abs(np.asarray(l0) - np.asarray(l1))),
        "logit_diff": float(np.max(np.abs(np.asarray(logits0) - np.asarray(logits1)))),
        "grad_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                         zip(jax.tree.leaves(g0), jax.tree.leaves(g1))),
    }))
    """
)


def test_llm_parameters_shard_over_a_model_axis_and_match_one_device():
    out = _run(LLM, 8)
    assert out["mesh"] == {"data": 2, "model": 4}
    assert out["q_spec"] == str(P(None, "model")) and out["o_spec"] == str(P("model", None))
    # 2 KV heads x head_dim 16 = 32 columns: divisible by 4, so the k projection is split too
    assert out["k_spec"] == str(P(None, "model")) and out["norm_spec"] == str(P(None))
    assert out["q_shard_cols"] * 4 == out["q_cols"]
    assert out["loss_diff"] < 1e-5 and out["logit_diff"] < 1e-4 and out["grad_diff"] < 1e-5


def test_model_mesh_refuses_a_model_axis_that_does_not_divide_the_devices():
    code = textwrap.dedent(
        """
        from pruneax import lab as par
        try:
            par.model_mesh(3)
        except ValueError as e:
            print('{"error": "%s"}' % str(e).replace('"', "'"))
        """
    )
    assert "model=3 must divide the number of devices (8)" in _run(code, 8)["error"]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    import jax.numpy as jnp

    from pruneax.lab import Checkpoints

    Checkpoints(tmp_path / "c").save(3, (jnp.ones(3), jnp.zeros((2, 2))), {"losses": []})
    step, (_, b), meta = Checkpoints(tmp_path / "c").latest((jnp.zeros(3), jnp.ones((2, 2))))
    assert step == 3 and meta == {"losses": []}
    np.testing.assert_array_equal(np.asarray(b), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="checkpoint does not match the model"):
        Checkpoints(tmp_path / "c").latest((jnp.zeros(3),))


LOTTERY = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax
    from pruneax.experiments import lottery_ticket as lt

    cfg = dataclasses.replace(lt.PRESETS["tiny"], iterations=40, eval_every=20, rounds=1,
                              batch_size=64, baselines=())
    out = lt.run(cfg, sys.argv[1])
    print(json.dumps({"devices": len(jax.devices()),
                      "acc": [r["final_test_acc"] for r in out["results"]],
                      "curve": [c[1] for r in out["results"] for c in r["curve"]]}))
    """
)


@pytest.mark.slow  # ~30 s; data parallelism across processes: tests/test_multiprocess.py
def test_lottery_ticket_trains_data_parallel_like_one_device(tmp_path):
    eight = _run(LOTTERY, 8, str(tmp_path / "eight"))
    one = _run(LOTTERY, 1, str(tmp_path / "one"))
    assert eight["devices"] == 8 and one["devices"] == 1
    np.testing.assert_allclose(eight["curve"], one["curve"], rtol=1e-3)  # validation losses
    np.testing.assert_allclose(eight["acc"], one["acc"], atol=1 / 360 + 1e-9)


VLM = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax
    from pruneax.experiments import vlm_token_pruning as vtp

    cfg = dataclasses.replace(
        vtp.PRESETS["tiny"], iterations=20, methods=("fastervlm",), llm_methods=("fastv",),
        combos=(), position_ablation=(), model_parallel=int(sys.argv[2]),
    )
    out = vtp.run(cfg, sys.argv[1])
    cfg, arrays = vtp.prepare(cfg, None)
    job = vtp.Job(cfg, vtp.vlm_config(cfg, arrays["x_train"].shape[1:3]), arrays)
    q = job.params0["vlm"]["llm"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    print(json.dumps({
        "devices": len(jax.devices()),
        "losses": [l for _, l in out["train_losses"]],
        "dense": out["evals"]["dense"]["accuracy"],
        "q_spec": str(q.value.sharding.spec),
    }))
    """
)


# slow (~140 s on a 2-core CPU); the default selection keeps the LLM model-axis sharding
# test and the data-parallel training tests
@pytest.mark.slow
def test_vlm_trains_with_the_llm_sharded_over_a_model_axis(tmp_path):
    eight = _run(VLM, 8, str(tmp_path / "eight"), "2")
    one = _run(VLM, 1, str(tmp_path / "one"), "1")
    assert eight["devices"] == 8 and one["devices"] == 1
    assert eight["q_spec"] == str(P(None, "model"))
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-3)
    assert abs(eight["dense"] - one["dense"]) <= 1 / 60 + 1e-9
