"""Resumable runs: orbax checkpoints of pytrees and a workdir's ``progress.json``."""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 (its exit hook registers first)
import dataclasses
import json
import os
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from pruneax.lab._io import write_json
from pruneax.lab._tree_names import check_names, get, leaf_name, nest, numbered


def config_json(cfg: Any) -> dict[str, Any]:
    """A dataclass config (or a dict) as plain JSON values: tuples become lists.

    Args:
      cfg: a dataclass instance or a JSON-able dict.

    Returns:
      The same fields as a dict of JSON values (what ``json.loads(json.dumps(...))`` gives).

    Raises:
      ValueError: if ``cfg`` is neither a dataclass instance nor a dict.

    Example:
      >>> import dataclasses
      >>> from pruneax.lab import config_json
      >>> @dataclasses.dataclass
      ... class C:
      ...     ratios: tuple = (0.5, 0.25)
      >>> config_json(C())
      {'ratios': [0.5, 0.25]}
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, dict):
        raise ValueError(f"config_json: cfg must be a dataclass instance or a dict; got {cfg!r}")
    return json.loads(json.dumps(cfg))


class Progress(dict):
    """``progress.json`` in a workdir: the results finished so far, so a resumed run skips them.

    Holds ``config`` (a run of a different config in the same workdir is refused: a workdir
    belongs to one config) and one dict per name in ``sections``. ``save()`` writes atomically.

    Args:
      workdir: the run's folder (created).
      cfg: the run's config (dataclass or dict; see ``config_json``).
      sections: names of the result sections (each starts as ``{}``).

    Raises:
      ValueError: if ``workdir`` already holds a run of a different config, or a live process
        of another run uses it (``lock_directory``).

    Example:
      >>> import tempfile
      >>> from pruneax.lab import Progress
      >>> d = tempfile.mkdtemp()
      >>> p = Progress(d, {"lr": 0.1}, ("evals",))
      >>> p["evals"]["topk"] = 0.9
      >>> p.save()
      >>> Progress(d, {"lr": 0.1}, ("evals",))["evals"]
      {'topk': 0.9}
      >>> Progress(d, {"lr": 0.2}, ("evals",))
      Traceback (most recent call last):
      ...
      ValueError: workdir ... holds a run of a different config; use a new --workdir
    """

    def __init__(self, workdir: str | os.PathLike, cfg: Any, sections: tuple[str, ...] = ()):
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        lock_directory(workdir)
        self.path = workdir / "progress.json"
        want = config_json(cfg)
        if self.path.exists():
            super().__init__(json.loads(self.path.read_text()))
            if self.get("config") != want:
                raise ValueError(
                    f"workdir {workdir} holds a run of a different config; use a new --workdir"
                )
        self.setdefault("config", want)
        for name in sections:
            self.setdefault(name, {})

    def save(self) -> None:
        """Writes ``progress.json`` atomically (temporary file + rename); in a multi-process
        run only JAX process 0 writes (every process holds the same results)."""
        if jax.process_index() == 0:
            write_json(self.path, dict(self))


# Checkpoints with a save in flight, held until it is on disk: a save still being written when
# the interpreter exits is finished first, even when its Checkpoints object is gone. It must
# run before concurrent.futures stops its thread pools at shutdown (orbax writes through them),
# so it is registered with threading's exit hooks, which run last-registered first and before
# ``atexit``'s; ``atexit`` where that hook does not exist.
_IN_FLIGHT: set = set()


def _finish_in_flight(directory: pathlib.Path | None = None) -> None:
    """Waits for the saves in flight (to ``directory`` only, when given)."""
    for ckpt in list(_IN_FLIGHT):
        if directory is None or ckpt.directory == directory:
            ckpt.wait()


getattr(threading, "_register_atexit", atexit.register)(_finish_in_flight)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_directory(directory: str | os.PathLike) -> pathlib.Path:
    """Marks ``directory`` as used by this process: a lock file ``.<name>.lock`` beside it holds
    the pid and host. Another live process of this host holding it -> ``ValueError`` naming its
    pid; a lock left by a dead process (killed, crashed) is taken over. Released at exit. Only
    JAX process 0 takes it (the other processes of a multi-host run share the directory).

    Args:
      directory: the directory to guard (need not exist yet).

    Returns:
      The lock file's path.

    Raises:
      ValueError: if a live process of this host holds the lock.

    Example:
      >>> import tempfile, pathlib
      >>> from pruneax.lab import lock_directory
      >>> d = pathlib.Path(tempfile.mkdtemp()) / "run"
      >>> lock_directory(d).name
      '.run.lock'
      >>> lock_directory(d).name  # the same process may take it again
      '.run.lock'
    """
    directory = pathlib.Path(directory).resolve()
    path = directory.parent / f".{directory.name}.lock"
    if jax.process_index() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
                pid, host = int(held["pid"]), str(held["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = -1, me["host"]  # unreadable: treat as stale
            if pid == me["pid"] and host == me["host"]:
                return path
            if host == me["host"] and pid > 0 and _pid_alive(pid):
                raise ValueError(
                    f"{directory} is in use by pid {pid} (lock {path}); wait for that run to "
                    "finish or use a new --workdir"
                ) from None
            if host != me["host"]:
                raise ValueError(
                    f"{directory} is locked by pid {pid} on host {host} (lock {path}); if that "
                    "run is dead, delete the lock file"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(_release, path, me["pid"])
        return path
    raise ValueError(f"could not take the lock {path}; another process keeps recreating it")


def _release(path: pathlib.Path, pid: int) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


class Checkpoints:
    """orbax: the leaves of a pytree at a step, plus a JSON dict of metadata.

    Leaves are saved as the (possibly sharded, possibly multi-host) ``jax.Array`` s they are:
    every process calls ``save`` and orbax writes each shard once, under the leaf's path in the
    tree (``0/blocks/3/attn/q/kernel``, ``1/0/mu/...``: a nested dict, readable with orbax
    alone). ``latest(like)`` restores each leaf by that name straight into the sharding of the
    matching leaf of ``like``, so a checkpoint written on 8 devices (or 2 hosts) restores on 1,
    and the other way round; a name missing on either side, or a shape that differs, is a
    ``ValueError`` naming the leaf. Checkpoints written by pruneax before session 12 (leaves
    numbered ``leaves/00000``, ...) are still read, by position. ``latest()`` without ``like``
    returns the tree as saved (nested dicts of NumPy arrays), for runs whose state changes
    shape from step to step (e.g. masks that exist only after a pruning round).

    Nothing is lost and nothing is silent: a checkpoint that cannot be restored (missing or
    garbage files, a ``validate`` hook that rejects its metadata) is reported by path on stderr,
    renamed ``<step>.corrupt-<time>`` and the previous retained one is restored instead; when none
    can be, ``latest`` raises a ``ValueError`` naming every step and its error. Two runs cannot
    share the directory (``lock_directory``).

    Args:
      directory: where the numbered step folders go.
      max_to_keep: how many of the newest steps to keep.

    Raises:
      ValueError: if ``max_to_keep`` is not a positive int, or another live process uses the
        directory.

    Example:
      >>> import tempfile, pathlib
      >>> import jax.numpy as jnp
      >>> from pruneax.lab import Checkpoints
      >>> ckpt = Checkpoints(pathlib.Path(tempfile.mkdtemp()) / "ckpt")
      >>> ckpt.latest({"w": jnp.zeros(2)}) is None
      True
      >>> ckpt.save(3, {"w": jnp.arange(2.0)}, {"loss": 0.5})
      >>> step, state, meta = ckpt.latest({"w": jnp.zeros(2)})
      >>> step, state["w"].tolist(), meta
      (3, [0.0, 1.0], {'loss': 0.5})
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(
                f"Checkpoints: max_to_keep must be a positive int; got {max_to_keep!r}"
            )
        self.ocp = ocp
        self.directory = pathlib.Path(directory).resolve()
        lock_directory(self.directory)
        # another object's save to this directory must land before the manager below starts
        # (it would delete that save's tmp folder as a write cut short)
        _finish_in_flight(self.directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            # async (orbax's default): save returns once the arrays are copied to host memory
            # and writes in a background thread; a write cut short by a kill leaves a tmp
            # folder, removed at the next start
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            ),
            item_handlers={  # known up front, so a fresh process can read item metadata
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    @staticmethod
    def _target(leaf):
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        leaf = np.asarray(leaf)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)

    def latest(
        self,
        like: Any = None,
        *,
        validate: Callable[[int, Any, dict[str, Any]], None] | None = None,
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """``(step, tree, meta)`` of the newest checkpoint that restores, or None when there is
        none. A newer one that does not restore is reported, set aside and skipped (see above).

        Args:
          like: a pytree with the saved structure: the leaves come back with its structure,
            shapes, dtypes and shardings. None: the tree as saved (nested dicts of arrays).
          validate: called as ``validate(step, tree, meta)``; raising ``ValueError`` marks that
            checkpoint unusable (e.g. metadata that disagrees with the step or the config).

        Raises:
          ValueError: if no retained checkpoint restores (e.g. they hold a different set of
            leaves than ``like``: "checkpoint does not match the model"), naming each.
        """
        _finish_in_flight(self.directory)  # by this object or another of this process
        errors = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                got = self._restore(step, like)
                if validate is not None:
                    validate(step, *got)
            except Exception as e:  # any failure to read one step: try the previous one
                errors.append((step, e))
                continue
            for bad, e in errors:
                self._set_aside(bad, e)
            return (step, *got)
        if not errors:
            return None
        listing = "; ".join(f"step {s} ({self.directory / str(s)}): {e}" for s, e in errors)
        raise ValueError(
            f"no checkpoint in {self.directory} can be restored (checkpoint does not match the "
            f"model, or is corrupt): {listing}; use a new --workdir"
        ) from errors[0][1]

    def _restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        args = self.ocp.args
        if like is None:
            got = self.manager.restore(
                step, args=args.Composite(state=args.StandardRestore(), meta=args.JsonRestore())
            )
            return got["state"], got["meta"]
        paths, treedef = jax.tree_util.tree_flatten_with_path(like)
        saved = self.manager.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        if numbered(saved):  # written before leaves were named: by position
            names = [("leaves", f"{i:05d}") for i in range(len(paths))]
        else:
            names = [leaf_name(path) for path, _ in paths]
            check_names(saved, names, [np.shape(v) for _, v in paths])
        target = nest(names, [self._target(v) for _, v in paths])
        got = self.manager.restore(
            step, args=args.Composite(state=args.StandardRestore(target), meta=args.JsonRestore())
        )
        if not isinstance(got["meta"], dict):
            raise ValueError(f"metadata is not a JSON object: {type(got['meta']).__name__}")
        leaves = [get(got["state"], name) for name in names]
        return jax.tree.unflatten(treedef, leaves), got["meta"]

    def _set_aside(self, step: int, error: Exception) -> None:
        src = self.directory / str(step)
        dst = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        print(
            f"[pruneax] checkpoint {src} cannot be restored ({type(error).__name__}: {error}); "
            f"moved to {dst.name}, resuming from an older one",
            file=sys.stderr,
            flush=True,
        )
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until every save of this object is on disk (finalised)."""
        self.manager.wait_until_finished()
        _IN_FLIGHT.discard(self)

    def save(
        self, step: int, state: Any, meta: dict[str, Any], *, flat: bool = True, wait: bool = False
    ) -> None:
        """Saves ``state`` and ``meta`` at ``step``, asynchronously unless ``wait``.

        The call returns once the arrays are copied off the device; the files are written in
        the background and a checkpoint only counts (``latest`` sees it) once finalised, so a
        kill mid-write loses that step, never an older one. The next ``save``, ``latest`` and
        ``wait`` wait for a write in flight; pass ``wait=True`` for the last save of a run.

        Args:
          step: the step number (the newest restores first).
          state: a pytree of arrays.
          meta: JSON-able metadata (losses, results so far, the config).
          flat: store the leaves under their path names (restore with ``latest(like)``);
            False stores the tree itself, which must then be nested dicts (restore with
            ``latest()``).
          wait: block until this checkpoint is on disk.

        Raises:
          ValueError: if two leaves of ``state`` get the same name (keys that differ only by
            ``.`` against ``_``).
        """
        if flat:
            paths = jax.tree_util.tree_flatten_with_path(state)[0]
            tree = nest([leaf_name(p) for p, _ in paths], [v for _, v in paths])
        self.manager.save(
            step,
            args=self.ocp.args.Composite(
                state=self.ocp.args.StandardSave(tree if flat else state),
                meta=self.ocp.args.JsonSave(meta),
            ),
        )
        _IN_FLIGHT.add(self)
        if wait:
            self.wait()
