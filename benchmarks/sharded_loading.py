"""Host memory of loading a checkpoint: one device, naive sharding, ``load_llm(mesh=...)``.

Command (numbers in BUILD_NOTES.md):
  python benchmarks/sharded_loading.py --out results/benchmarks/sharded_loading.md
  python benchmarks/sharded_loading.py --smoke        # a few MB, seconds

A random Llama checkpoint in bfloat16 (two safetensors shards + index, written with
``write_safetensors``) is loaded in fresh subprocesses on fake CPU devices
(``--xla_force_host_platform_device_count``), each reporting the peak of its anonymous resident
memory (``RssAnon`` in ``/proc/self/status``, sampled every millisecond, minus the value after
JAX started) -- the memory the process itself allocated. File pages of the memory-mapped
checkpoint are not counted: the kernel can drop them at any time. On CPU devices the
"device" buffers are host memory too, so the figure includes the shards a process keeps.

Modes:
- ``one device``: ``load_llm(path)``, the whole model on one device.
- ``naive, 8 devices``: every tensor read into memory, the model built on one device, then
  ``shard_model`` over 8 devices (what loading then sharding does).
- ``mesh, 8 devices``: ``load_llm(path, mesh=...)``: each device's slices read and placed.
- ``mesh, 2 processes x 4``: the same, in two processes joined by ``jax.distributed`` (a
  multi-host run on one machine): each process reads only its own devices' slices. Each
  process also checks its shards against the checkpoint tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import ml_dtypes
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruneax import lab, models  # noqa: E402

WORKER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    mode, path, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    import jax
    if mode == "dist":
        jax.config.update("jax_num_cpu_devices", 4)
        jax.distributed.initialize(sys.argv[4], num_processes=2, process_id=pid)
    import numpy as np
    import pruneax.models as M
    jax.devices()
    base, peak, stop = anon(), [0], [False]
    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    mesh = jax.make_mesh((8,), ("model",)) if mode != "one" else None
    if mode == "naive":
        tensors = {k: np.array(v) for k, v in M.read_checkpoint(path).items()}  # all in memory
        model = M.shard_model(M.load_llm(path), mesh)
        del tensors
    else:
        model = M.load_llm(path, mesh=mesh)
    leaves = jax.tree.leaves(jax.tree.map(lambda x: x, __import__("flax").nnx.state(model)))
    jax.block_until_ready(leaves)
    seconds = time.perf_counter() - t0
    stop[0] = True
    thread.join()
    peak[0] = max(peak[0], anon())
    local = sum(s.data.nbytes for x in leaves for s in x.addressable_shards)
    checked = 0
    if mode == "dist":  # every local shard equals its slice of the checkpoint tensor
        tensors = M.read_checkpoint(path)
        q = model.layers[0].self_attn.q_proj.kernel[...]
        want = tensors["model.layers.0.self_attn.q_proj.weight"].T
        for s in q.addressable_shards:
            assert np.array_equal(np.asarray(s.data), want[s.index]), s.index
            checked += 1
    print(json.dumps({"mode": mode, "process": pid, "peak_bytes": peak[0] - base,
                      "local_param_bytes": local, "seconds": seconds, "checked": checked}))
    """
)


def write_checkpoint(root: pathlib.Path, cfg: dict, seed: int = 0) -> int:
    """A random bfloat16 Llama checkpoint in two shards; returns its tensor bytes."""
    rng = np.random.default_rng(seed)
    d, f, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["layers"]
    hd = d // cfg["heads"]
    kv = cfg["kv_heads"] * hd
    shapes = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (v, d),
    }
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })  # fmt: skip
    names = list(shapes)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map, total = {}, 0
    root.mkdir(parents=True, exist_ok=True)
    for j, part in enumerate(halves):
        file = f"model-{j + 1:05d}-of-00002.safetensors"
        arrays = {}
        for name in part:
            a = rng.standard_normal(shapes[name], dtype=np.float32) * 0.02
            arrays[name] = a.astype(ml_dtypes.bfloat16)
            total += arrays[name].nbytes
            weight_map[name] = file
        models.write_safetensors(root / file, arrays)
        del arrays
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": v,
        "hidden_size": d, "intermediate_size": f, "num_hidden_layers": n,
        "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
        "torch_dtype": "bfloat16",
    }  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    return total


def run(mode: str, path: pathlib.Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if mode == "dist":
        port = 20000 + os.getpid() % 20000
        command = [sys.executable, "-c", WORKER, mode, str(path)]
        pipes = dict(env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs = [
            subprocess.Popen([*command, str(i), f"localhost:{port}"], **pipes) for i in range(2)
        ]
        outs = [p.communicate(timeout=900) for p in procs]
    else:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={1 if mode == 'one' else 8}"
        p = subprocess.run(
            [sys.executable, "-c", WORKER, mode, str(path), "0"],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        outs = [(p.stdout, p.stderr)]
    rows = []
    for out, err in outs:
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"worker {mode} failed:\n{err[-3000:]}")
        rows.append(json.loads(lines[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/benchmarks/sharded_loading.md")
    parser.add_argument("--smoke", "--quick", action="store_true", help="a few MB (smoke test)")
    args = parser.parse_args(argv)
    if args.smoke:
        cfg = dict(vocab_size=512, hidden_size=64, intermediate_size=128, layers=2, heads=4,
                   kv_heads=2)  # fmt: skip
    else:  # about 160M parameters, 317 MB in bfloat16
        cfg = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, layers=8,
                   heads=16, kv_heads=8)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "ckpt"
        size = write_checkpoint(path, cfg)
        print(f"checkpoint: {size / 2**20:.1f} MiB of bfloat16 tensors", flush=True)
        for mode in ("one", "naive", "mesh", "dist"):
            for r in run(mode, path):
                r["ratio_to_model"] = r["peak_bytes"] / size
                rows.append(r)
                print(json.dumps(r), flush=True)
    names = {"one": "one device", "naive": "naive, 8 devices", "mesh": "mesh, 8 devices",
             "dist": "mesh, 2 processes x 4"}  # fmt: skip
    table = lab.markdown_table(
        ["mode", "process", "peak anon MiB", "peak / model", "params held MiB", "seconds"],
        [
            [names[r["mode"]], r["process"], f"{r['peak_bytes'] / 2**20:.1f}",
             f"{r['ratio_to_model']:.2f}", f"{r['local_param_bytes'] / 2**20:.1f}",
             f"{r['seconds']:.2f}"]
            for r in rows
        ],
    )  # fmt: skip
    result = {"machine": lab.machine(), "config": cfg, "model_bytes": size, "rows": rows}
    text = (
        f"# Host memory of loading a {size / 2**20:.1f} MiB bfloat16 Llama checkpoint\n\n"
        f"Machine: {lab.describe(result['machine'])}.\n\n{table}"
    )
    lab.write_report(args.out, text, result)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
