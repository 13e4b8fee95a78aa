"""Resumable runs: orbax checkpoints of pytrees and a workdir's ``progress.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from pruneax.lab._io import write_json


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
      ValueError: if ``workdir`` already holds a run of a different config.

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
        """Writes ``progress.json`` atomically (temporary file + rename)."""
        write_json(self.path, dict(self))


class Checkpoints:
    """orbax: the leaves of a pytree at a step, plus a JSON dict of metadata.

    Leaves are saved as the (possibly sharded, possibly multi-host) ``jax.Array`` s they are:
    every process calls ``save`` and orbax writes each shard once. ``latest(like)`` restores
    each leaf straight into the sharding of the matching leaf of ``like``, so a checkpoint
    written on 8 devices (or 2 hosts) restores on 1, and the other way round. ``latest()``
    without ``like`` returns the tree as saved (nested dicts of NumPy arrays), for runs whose
    state changes shape from step to step (e.g. masks that exist only after a pruning round).

    Args:
      directory: where the numbered step folders go.
      max_to_keep: how many of the newest steps to keep.

    Raises:
      ValueError: if ``max_to_keep`` is not a positive int.

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
        self.manager = ocp.CheckpointManager(
            pathlib.Path(directory).resolve(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep),
        )

    @staticmethod
    def _target(leaf):
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        leaf = np.asarray(leaf)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)

    def latest(self, like: Any = None) -> tuple[int, Any, dict[str, Any]] | None:
        """``(step, tree, meta)`` of the newest checkpoint, or None when there is none.

        Args:
          like: a pytree with the saved structure: the leaves come back with its structure,
            shapes, dtypes and shardings. None: the tree as saved (nested dicts of arrays).

        Raises:
          ValueError: if the checkpoint holds a different set of leaves than ``like``.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        if like is None:
            got = self.manager.restore(
                step,
                args=self.ocp.args.Composite(
                    state=self.ocp.args.StandardRestore(), meta=self.ocp.args.JsonRestore()
                ),
            )
            return step, got["state"], got["meta"]
        leaves, treedef = jax.tree.flatten(like)
        target = {"leaves": {f"{i:05d}": self._target(v) for i, v in enumerate(leaves)}}
        try:
            got = self.manager.restore(
                step,
                args=self.ocp.args.Composite(
                    state=self.ocp.args.StandardRestore(target), meta=self.ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError("checkpoint does not match the model; use a new --workdir") from e
        restored = got["state"]["leaves"]
        tree = jax.tree.unflatten(treedef, [restored[f"{i:05d}"] for i in range(len(leaves))])
        return step, tree, got["meta"]

    def save(self, step: int, state: Any, meta: dict[str, Any], *, flat: bool = True) -> None:
        """Saves ``state`` and ``meta`` at ``step`` and waits until they are on disk.

        Args:
          step: the step number (the newest restores first).
          state: a pytree of arrays.
          meta: JSON-able metadata (losses, results so far, the config).
          flat: store the leaves by position (restore with ``latest(like)``); False stores the
            tree itself, which must then be nested dicts (restore with ``latest()``).
        """
        tree = {"leaves": {f"{i:05d}": v for i, v in enumerate(jax.tree.leaves(state))}}
        self.manager.save(
            step,
            args=self.ocp.args.Composite(
                state=self.ocp.args.StandardSave(tree if flat else state),
                meta=self.ocp.args.JsonSave(meta),
            ),
        )
        self.manager.wait_until_finished()
