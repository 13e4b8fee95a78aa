"""A real multi-process run: two processes joined by ``jax.distributed`` on localhost.

Each process has 4 CPU devices (``--xla_force_host_platform_device_count=4``); together they
form one 8-device data-parallel mesh and reduce gradients over gloo collectives, as the hosts
of a TPU pod slice do over the network. The ViT experiment is launched exactly as on a pod
(its ``--coordinator_address / --num_processes / --process_id`` flags), with a shorter preset.

Checked against one process with 8 devices: the same results (training losses, accuracies,
fine-tuning); only process 0 writes results, plots and ``progress.json``; and a pair in which
one process is SIGKILLed mid-training (after its first checkpoint), then restarted as a pair,
resumes from that checkpoint and ends with the same results.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The worker: the experiment's own main() with its CLI flags; the tiny preset shortened so that
# training has a checkpoint (step 10) before its end (step 20). With KILL_AT set, process 1
# SIGKILLs itself right after saving that checkpoint. Every atomic result write (os.replace
# outside checkpoints/) is counted per process.
WORKER = textwrap.dedent(
    """
    import dataclasses, json, os, signal, sys
    from pruneax.experiments import vit_token_pruning as vtp
    from pruneax import lab

    vtp.PRESETS["tiny"] = dataclasses.replace(
        vtp.PRESETS["tiny"], iterations=20, warmup=5, log_every=10, ckpt_every=10,
        finetune_top=1, finetune_steps=10, throughput_repeats=1, throughput_iters=1,
    )
    writes = []
    replace = os.replace
    def counted(src, dst, *a, **k):
        if "checkpoints" not in str(dst):
            writes.append(os.path.basename(str(dst)))
        return replace(src, dst, *a, **k)
    os.replace = counted

    kill_at = int(os.environ.get("KILL_AT", "0"))
    if kill_at:
        save = lab.Checkpoints.save
        def save_then_die(self, step, *a, **k):
            save(self, step, *a, **k)
            import jax
            if step == kill_at and jax.process_index() == 1:
                self.wait()  # saves are asynchronous: die once this one is on disk
                print("killing process 1 after step", step, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        lab.Checkpoints.save = save_then_die

    argv = sys.argv[1:] + ["--preset", "tiny", "--methods", "topk", "--eval_size", "64"]
    vtp.main(argv)
    import jax
    print("WRITES " + json.dumps({"process": jax.process_index(),
                                  "devices": len(jax.devices()),
                                  "local_devices": len(jax.local_devices()),
                                  "writes": writes}), flush=True)
    """
)


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **extra}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _report(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("WRITES "))
    return json.loads(line[len("WRITES ") :])


def _pair(workdir: pathlib.Path, cache: pathlib.Path, kill_at: int = 0, timeout: float = 600):
    """Launches the two processes; returns [(returncode, stdout + stderr)] per process. When
    process 1 dies by SIGKILL, process 0 (blocked in a collective) is killed too, as a pod's
    scheduler would: the pair is then restarted by the caller."""
    port = _free_port()
    env = _env(4, KILL_AT=str(kill_at))

    def launch(i: int) -> subprocess.Popen:
        argv = [
            *("--workdir", str(workdir), "--coordinator_address", f"localhost:{port}"),
            *("--num_processes", "2", "--process_id", str(i), "--compilation_cache", str(cache)),
        ]
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, *argv],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    procs = [launch(0), launch(1)]
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if procs[1].poll() == -signal.SIGKILL and procs[0].poll() is None:
            time.sleep(2)
            procs[0].kill()
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    return [(p.wait(), p.stdout.read()) for p in procs]


def _results(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def _assert_same_results(got: dict, want: dict) -> None:
    # one program over 8 devices either way; the cross-process all-reduce may sum in another
    # order, so losses agree to float32 rounding and accuracies to one of the 64 images (a
    # near-tie prediction may flip)
    np.testing.assert_allclose(
        np.array(got["train_losses"]), np.array(want["train_losses"]), rtol=1e-5
    )
    assert got["evals"].keys() == want["evals"].keys()
    for name, e in want["evals"].items():
        assert abs(got["evals"][name]["accuracy"] - e["accuracy"]) <= 1 / 64, name
        assert got["evals"][name]["block_tokens"] == e["block_tokens"], name
    assert got["finetune"].keys() == want["finetune"].keys()
    for name, f in want["finetune"].items():
        g = got["finetune"][name]
        np.testing.assert_allclose(np.array(g["losses"]), np.array(f["losses"]), rtol=1e-5)
        for key in ("accuracy_training_free", "accuracy_finetuned", "accuracy_finetuned_unpruned"):
            assert abs(g[key] - f[key]) <= 1 / 64, (name, key)
    assert got["throughput"].keys() == want["throughput"].keys()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    out = subprocess.run(
        [sys.executable, "-c", WORKER, "--workdir", str(workdir), "--compilation_cache", "off"],
        cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = _report(out.stdout)
    assert report["devices"] == 8 and report["process"] == 0
    return _results(workdir)


def test_two_processes_killed_and_restarted_equal_one_process(one_process, tmp_path):
    workdir, cache = tmp_path / "pair", tmp_path / "cache"  # the restart reuses compiled code
    # 1. process 1 dies by SIGKILL right after the step-10 checkpoint; process 0 is stopped
    killed = _pair(workdir, cache, kill_at=10)
    assert killed[1][0] == -signal.SIGKILL, killed[1][1][-3000:]
    assert "killing process 1 after step 10" in killed[1][1]
    assert killed[0][0] != 0  # stopped with its partner: the run did not finish
    assert not (workdir / "results.json").exists()
    assert (workdir / "checkpoints" / "train").is_dir()

    # 2. the pair restarted: resumes at step 10 (stale lock taken over), finishes
    runs = _pair(workdir, cache)
    for code, log in runs:
        assert code == 0, log[-3000:]
        assert "train: resuming at step 10/20" in log, log[-3000:]
    reports = sorted((_report(log) for _, log in runs), key=lambda r: r["process"])
    assert [(r["process"], r["devices"], r["local_devices"]) for r in reports] == [
        (0, 8, 4),
        (1, 8, 4),
    ]
    # only process 0 wrote results, plots and progress
    assert reports[1]["writes"] == []
    assert {"results.json", "results.md", "accuracy.png", "speedup.png", "kept_patches.png",
            "progress.json"} <= set(reports[0]["writes"])  # fmt: skip
    _assert_same_results(_results(workdir), one_process)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("localhost:1", 2, None), "together"),
        ((None, 2, 0), "together"),
        (("localhost:1", 2, 2), r"process_id must be in \[0, 2\)"),
        (("localhost:1", 2, -1), r"process_id must be in \[0, 2\)"),
    ],
)
def test_initialize_distributed_checks_its_arguments_before_joining(args, match):
    from pruneax import lab

    with pytest.raises(ValueError, match=match):
        lab.initialize_distributed(*args)
