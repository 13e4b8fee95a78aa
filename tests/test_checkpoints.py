"""pruneax.lab.Checkpoints / Progress / lock_directory: a corrupt checkpoint is reported and the
previous one restored, metadata can be validated, and two live runs cannot share a directory
(issue 19 items 13-15); the lottery ticket's config is checked before any work."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pruneax import lab
from pruneax.experiments import lottery_ticket as lt

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _two_steps(directory: pathlib.Path) -> lab.Checkpoints:
    ckpt = lab.Checkpoints(directory, max_to_keep=3)
    ckpt.save(1, {"w": jnp.full(3, 1.0)}, {"rows": [1]})
    ckpt.save(2, {"w": jnp.full(3, 2.0)}, {"rows": [1, 2]})
    ckpt.wait()  # the saves are asynchronous; the tests below edit their files
    return ckpt


def _garbage(path: pathlib.Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(256))


CORRUPTIONS = {
    "meta_missing": lambda step: (step / "meta" / "metadata").unlink(),
    "meta_garbage": lambda step: _garbage(step / "meta" / "metadata"),
    "state_deleted": lambda step: [p.unlink() for p in step.glob("state/**/*") if p.is_file()],
    "state_random_bytes": lambda step: [
        _garbage(p) for p in step.glob("state/**/*") if p.is_file()
    ],
    "state_zeroed": lambda step: [
        p.write_bytes(b"\0" * p.stat().st_size) for p in step.glob("state/**/*") if p.is_file()
    ],
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("like", [True, False])
def test_a_corrupt_latest_falls_back_to_the_previous_one(tmp_path, capsys, how, like):
    _two_steps(tmp_path / "c")
    CORRUPTIONS[how](tmp_path / "c" / "2")
    got = lab.Checkpoints(tmp_path / "c").latest({"w": jnp.zeros(3)} if like else None)
    assert got is not None
    step, tree, meta = got
    assert step == 1 and meta == {"rows": [1]}
    leaves = tree["w"]  # stored under its name: the same with or without a template
    np.testing.assert_array_equal(np.asarray(leaves), np.ones(3))
    err = capsys.readouterr().err
    assert str(tmp_path / "c" / "2") in err and "cannot be restored" in err
    moved = [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("2.corrupt-")]
    assert len(moved) == 1  # set aside, not deleted; a resumed run can save step 2 again
    ckpt = lab.Checkpoints(tmp_path / "c")
    ckpt.save(2, {"w": jnp.full(3, 5.0)}, {"rows": [1, 5]})
    assert ckpt.latest({"w": jnp.zeros(3)})[0] == 2


def test_nothing_restorable_names_every_step(tmp_path):
    _two_steps(tmp_path / "c")
    for step in ("1", "2"):
        CORRUPTIONS["meta_garbage"](tmp_path / "c" / step)
    with pytest.raises(ValueError, match=r"no checkpoint in .* can be restored.*step 2.*step 1"):
        lab.Checkpoints(tmp_path / "c").latest({"w": jnp.zeros(3)})


def test_validate_rejects_tampered_metadata(tmp_path, capsys):
    _two_steps(tmp_path / "c")

    def rows_match_step(step, tree, meta):
        if len(meta["rows"]) != step:
            raise ValueError(f"{len(meta['rows'])} rows at step {step}")

    ckpt = lab.Checkpoints(tmp_path / "c")
    assert ckpt.latest(validate=rows_match_step)[0] == 2  # consistent: newest
    ckpt.save(3, {"w": jnp.full(3, 3.0)}, {"rows": [1]})  # tampered: 1 row at step 3
    step, _, meta = ckpt.latest(validate=rows_match_step)
    assert step == 2 and meta["rows"] == [1, 2]
    assert "1 rows at step 3" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_still_refused(tmp_path):
    _two_steps(tmp_path / "c")
    with pytest.raises(ValueError, match="checkpoint does not match the model"):
        lab.Checkpoints(tmp_path / "c").latest({"w": jnp.zeros(3), "b": jnp.zeros(2)})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1", "2"]  # nothing moved


HOLD = """
import sys, time
from pruneax import lab
lab.Checkpoints(sys.argv[1])
lab.Progress(sys.argv[2], {"a": 1})
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_run_locks_its_directories_and_a_dead_one_does_not(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ckpt_dir, workdir = tmp_path / "ckpt", tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ckpt_dir), str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by pid {proc.pid}"):
            lab.Checkpoints(ckpt_dir)
        with pytest.raises(ValueError, match=f"in use by pid {proc.pid}"):
            lab.Progress(workdir, {"a": 1})
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the lock files stay behind
        proc.wait(timeout=60)
    assert (tmp_path / ".ckpt.lock").exists()
    lab.Checkpoints(ckpt_dir)  # the stale lock of a dead process is taken over
    lab.Progress(workdir, {"a": 1})
    assert json.loads((tmp_path / ".ckpt.lock").read_text())["pid"] == os.getpid()


def test_a_clean_exit_releases_the_lock(tmp_path):
    code = "import sys; from pruneax import lab; lab.lock_directory(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], env=env, check=True)
    deadline = time.time() + 10
    while (tmp_path / ".d.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / ".d.lock").exists()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(rounds=-1), "rounds must be an int >= 0"),
        (dict(iterations=-5), "iterations must be an int >= 1"),
        (dict(rewind_iteration=10_000), r"rewind_iteration must be an int in \[0, iterations"),
        (dict(rate=1.0), r"rate must be in \(0, 1\)"),
        (dict(seeds=()), "seeds must name at least one seed"),
        (dict(baselines=("reinit", "magic")), "baselines must be"),
    ],
)
def test_lottery_ticket_refuses_a_bad_config_before_any_work(tmp_path, change, match):
    cfg = dataclasses.replace(lt.PRESETS["tiny"], **change)
    with pytest.raises(ValueError, match=match):
        lt.run(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_atomic_writes_leave_no_temporary_file_and_normal_permissions(tmp_path):
    """Results are written by rename; the file gets the mode ``open`` would give it (umask),
    not the temporary file's 0600 (unreadable to others on shared storage)."""
    umask = os.umask(0o022)
    os.umask(umask)
    p = lab.write_json(tmp_path / "r" / "results.json", {"a": np.arange(2)})
    assert json.loads(p.read_text()) == {"a": [0, 1]}
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert [q.name for q in p.parent.iterdir()] == ["results.json"]


# ------------------------------------------------- checkpoints as named state (issue 20 item 5)


def _model_state(seed: int = 0, features: int = 4):
    import optax
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, features, rngs=rngs)
            self.head = nnx.Linear(features, 2, rngs=rngs)

    _, params = nnx.split(Net(nnx.Rngs(seed)), nnx.Param)
    tx = optax.adam(1e-3)
    return params, tx.init(params)


def test_leaves_are_stored_under_their_parameter_names(tmp_path):
    ckpt = lab.Checkpoints(tmp_path / "c")
    params, opt = _model_state()
    ckpt.save(1, (params, opt), {})
    _, saved, _ = ckpt.latest()  # the tree as stored, read without a template
    assert set(saved) == {"0", "1"}
    assert set(saved["0"]) == {"dense", "head"}
    np.testing.assert_array_equal(
        saved["0"]["dense"]["kernel"]["value"], params["dense"]["kernel"][...]
    )
    assert "mu" in saved["1"]["0"] and "count" in saved["1"]["0"]  # adam's state, by name


def test_a_fresh_model_restores_by_name(tmp_path):
    ckpt = lab.Checkpoints(tmp_path / "c")
    ckpt.save(5, _model_state(0), {"loss": 1.0}, wait=True)  # another object reads it
    step, (params, _), meta = lab.Checkpoints(tmp_path / "c").latest(_model_state(1))
    want, _ = _model_state(0)
    assert step == 5 and meta == {"loss": 1.0}
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_renamed_or_reshaped_parameter_is_named_in_the_error(tmp_path):
    ckpt = lab.Checkpoints(tmp_path / "c")
    ckpt.save(1, {"dense": {"kernel": jnp.ones((3, 4))}, "bias": jnp.zeros(4)}, {})
    renamed = {"proj": {"kernel": jnp.ones((3, 4))}, "bias": jnp.zeros(4)}
    with pytest.raises(
        ValueError,
        match=r"missing from the checkpoint: proj/kernel.*not in the model: dense/kernel",
    ):
        ckpt.latest(renamed)
    reshaped = {"dense": {"kernel": jnp.ones((3, 5))}, "bias": jnp.zeros(4)}
    with pytest.raises(
        ValueError, match=r"dense/kernel has shape \(3, 4\) in the checkpoint, \(3, 5\) here"
    ):
        ckpt.latest(reshaped)
    assert (tmp_path / "c" / "1").is_dir()  # a model mismatch moves nothing aside


def test_checkpoints_written_before_names_still_restore(tmp_path):
    """The earlier layout (leaves numbered "00000", ... under "leaves"), read by position."""
    import orbax.checkpoint as ocp

    tree = {"b": jnp.arange(3.0), "a": jnp.ones((2, 2))}
    manager = ocp.CheckpointManager(tmp_path / "c")
    numbered = {"leaves": {f"{i:05d}": v for i, v in enumerate(jax.tree.leaves(tree))}}
    manager.save(7, args=ocp.args.Composite(
        state=ocp.args.StandardSave(numbered), meta=ocp.args.JsonSave({"k": 1})))  # fmt: skip
    manager.wait_until_finished()
    step, got, meta = lab.Checkpoints(tmp_path / "c").latest(jax.tree.map(jnp.zeros_like, tree))
    assert step == 7 and meta == {"k": 1}
    np.testing.assert_array_equal(got["b"], tree["b"])
    np.testing.assert_array_equal(got["a"], tree["a"])


def test_leaves_whose_names_collide_are_refused(tmp_path):
    """Dots become underscores (orbax joins names with dots): "a.b" and "a_b" would collide."""
    with pytest.raises(ValueError, match="two leaves are named a_b"):
        lab.Checkpoints(tmp_path / "c").save(1, {"a.b": jnp.ones(1), "a_b": jnp.ones(1)}, {})


def test_async_saves_are_complete_when_read_and_a_cut_write_is_ignored(tmp_path):
    """Saves return before the write ends (orbax's async mode); ``latest`` and ``wait`` see
    every one complete. A write cut short by a kill (orbax's tmp folder, here a garbage one)
    never counts and is removed at the next start."""
    state = {"w": jnp.arange(2_000_000, dtype=jnp.float32), "b": jnp.ones(3)}
    ckpt = lab.Checkpoints(tmp_path / "ckpt", max_to_keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, jax.tree.map(lambda v, s=step: v * s, state), {"step": step})
    step, got, meta = ckpt.latest(state)  # waits for the write in flight
    assert step == 3 and meta == {"step": 3}
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(state["w"]) * 3)
    ckpt.save(4, state, {"step": 4}, wait=True)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [
        "2", "3", "4",
    ]  # fmt: skip
    cut = tmp_path / "ckpt" / "5.orbax-checkpoint-tmp-1700000000000000"
    (cut / "state").mkdir(parents=True)
    (cut / "state" / "garbage").write_bytes(b"\0" * 10)
    ckpt.manager.close()
    again = lab.Checkpoints(tmp_path / "ckpt")
    assert again.latest(state)[0] == 4
    assert not cut.exists()


def test_a_save_in_flight_at_exit_is_finished(tmp_path):
    script = (
        "import sys, jax.numpy as jnp\nfrom pruneax import lab\n"
        "lab.Checkpoints(sys.argv[1]).save(7, {'w': jnp.arange(4_000_000.0)}, {'k': 1})\n"
    )  # returns before the write ends; the interpreter exits right after
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], check=True, env=env)
    step, tree, meta = lab.Checkpoints(tmp_path / "c").latest({"w": jnp.zeros(4_000_000)})
    assert step == 7 and meta == {"k": 1} and float(tree["w"][-1]) == 3_999_999.0
