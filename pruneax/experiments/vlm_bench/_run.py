"""``run_benchmark``: a real VLM checkpoint on a benchmark, several visual-token pruning
methods and budgets at once; batched greedy generation, resumable, scored by the benchmark's
official scorer, with results JSON / CSV and plots.

Per setting the pending items (not yet in its JSONL) are taken in order in chunks, encoded by
the checkpoint's processor, grouped (by ``max_new_tokens``; by image size for LLaVA-NeXT,
whose ``image_sizes`` are static) and cut into batches of ``batch_size`` rows (a short batch is
filled with copies of its last row, whose outputs are dropped, so shapes repeat).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pruneax.experiments.vlm_bench import _prompting as prompting
from pruneax.experiments.vlm_bench import _run_model as rm
from pruneax.experiments.vlm_bench import _run_store as store
from pruneax.experiments.vlm_bench._items import BENCHMARKS, Item
from pruneax.experiments.vlm_bench._run_methods import Setting, parse_settings

_TAG = "[vlm_bench]"


def parse_mesh(mesh: Any) -> Any:
    """None, a ``jax.sharding.Mesh``, or ``"data=D,model=M"`` -> a ("data", "model") mesh.

    Raises:
      ValueError: for a malformed string or more devices than there are.
    """
    if mesh is None or not isinstance(mesh, str):
        return mesh
    sizes = {"data": 1, "model": 1}
    for part in mesh.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in sizes or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"mesh must look like 'data=1,model=1'; got {mesh!r}")
        sizes[name.strip()] = int(value)
    from pruneax import lab

    n = sizes["data"] * sizes["model"]
    if n > len(jax.devices()):
        raise ValueError(f"mesh {mesh!r} needs {n} devices; {len(jax.devices())} are visible")
    return lab.model_mesh(sizes["model"], jax.devices()[:n])


def _positive(name: str, value: Any, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} int; "
                         f"got {value!r}")  # fmt: skip


def _batches(encoded: list[tuple[Item, Any]], setting: Setting, batch_size: int):
    groups: dict[tuple, list[tuple[Item, Any]]] = {}
    for item, enc in encoded:
        key = (item.max_new_tokens, enc.image_size)  # coverage's text masks its padding
        groups.setdefault(key, []).append((item, enc))
    for rows in groups.values():
        for i in range(0, len(rows), batch_size):
            yield rows[i : i + batch_size]


class _Runner:
    """One run's state: model, processor, options."""

    def __init__(self, model, processor, *, batch_size, bucket, seed, fastv_layer, mesh, log):
        self.model, self.processor = model, processor
        self.family = prompting.family_of(model)
        tok = processor.tokenizer
        self.eos = tok.eos_token_id
        pad = tok.pad_token_id
        self.pad = int(pad if pad is not None else (self.eos if self.eos is not None else 0))
        self.batch_size, self.bucket, self.seed = batch_size, bucket, seed
        self.fastv_layer, self.mesh, self.log = fastv_layer, mesh, log

    def encode(self, items: Sequence[Item]) -> list[tuple[Item, Any]]:
        return [(it, prompting.encode(self.processor, self.family, it.question, it.image))
                for it in items]  # fmt: skip

    def arrays(self, rows, setting: Setting) -> dict[str, Any]:
        encs = [e for _, e in rows]
        encs += [encs[-1]] * (self.batch_size - len(encs))
        return rm.build_batch(encs, self.pad, self.bucket)

    def key(self, first_id: str) -> Any:
        return jax.random.fold_in(jax.random.key(self.seed), zlib.crc32(first_id.encode()))

    def run_setting(self, setting, items, path, budget) -> tuple[bool, int]:
        """Generates the pending items of ``setting``; returns (finished, batches used)."""
        done = store.read_predictions(path)
        pending = [it for it in items if it.id not in done]
        total, start_done, used = len(items), len(done), 0
        t0 = time.perf_counter()
        chunk = self.batch_size * 8
        for c in range(0, len(pending), chunk):
            for rows in _batches(self.encode(pending[c : c + chunk]), setting, self.batch_size):
                if budget is not None and used >= budget:
                    return False, used
                batch = self.arrays(rows, setting)
                tokens, n_in, n_out = rm.generate_batch(
                    self.model, self.family, setting, batch,
                    max_new_tokens=rows[0][0].max_new_tokens, eos=self.eos, pad=self.pad,
                    key=self.key(rows[0][0].id), fastv_layer=self.fastv_layer, mesh=self.mesh,
                )  # fmt: skip
                recs = [
                    dict(id=it.id, prediction=prompting.decode(self.processor.tokenizer,
                                                               tokens[i], self.eos),
                         visual_tokens=n_in, retained_tokens=n_out, P=len(enc.prefix),
                         Q=len(enc.question))
                    for i, (it, enc) in enumerate(rows)
                ]  # fmt: skip
                store.append_predictions(path, recs)
                used += 1
                start_done += len(recs)
                rate = (start_done - (total - len(pending))) / (time.perf_counter() - t0)
                eta = (total - start_done) / rate if rate > 0 else float("nan")
                self.log(f"{_TAG} {setting.name}: {start_done}/{total} items, "
                         f"{rate:.2f} items/s, ETA {eta:.0f} s")  # fmt: skip
        return True, used

    def latency(self, setting: Setting, items: Sequence[Item], repeats: int) -> float | None:
        if repeats == 0:
            return None
        rows = next(_batches(self.encode(items[: self.batch_size]), setting, self.batch_size))
        return rm.prefill_latency(
            self.model, self.family, setting, self.arrays(rows, setting),
            key=self.key(rows[0][0].id), fastv_layer=self.fastv_layer, repeats=repeats,
            mesh=self.mesh,
        )  # fmt: skip


def run_benchmark(
    checkpoint: str | os.PathLike,
    benchmark: str,
    data: str | os.PathLike,
    *,
    workdir: str | os.PathLike,
    methods: Sequence[str] = ("none",),
    keep: Sequence[float] = (0.5,),
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: Any = "auto",
    mesh: Any = None,
    seed: int = 0,
    fastv_layer: int = 2,
    bucket: int = 16,
    timing_repeats: int = 5,
    max_batches: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Evaluates a VLM checkpoint on a benchmark under several token-pruning settings.

    Loads the model with ``load_vlm`` and the checkpoint's transformers processor (PIL image
    processor), wraps each item's question in the family's conversation format, and runs
    batched greedy generation per setting (``"none"``: dense, once; every other method once
    per keep ratio). Predictions are appended per batch to ``workdir/predictions/*.jsonl``; a
    rerun skips the items already there. When every setting is complete it writes
    ``results.json`` (per setting: method, keep, visual tokens entering the LLM and reaching
    its last layer, the benchmark's score dict and ``main``, mean prefill FLOPs per example,
    median prefill latency of one batch), ``results.csv`` and plots of the main score against
    retained tokens, FLOPs and latency.

    Args:
      checkpoint: transformers checkpoint folder (LLaVA-1.5, LLaVA-NeXT, PaliGemma) with its
        processor files, or a hub id.
      benchmark: a key of ``BENCHMARKS``.
      data: the benchmark's local data folder (passed to its reader).
      workdir: the run's folder (created); one config per workdir.
      methods: method names (``"none"``, every pre-LLM method of ``VLM_SELECT_METHODS`` and
        its aliases, ``"feather_pre"``, ``"coverage_vision"``, in-LLM ``"fastv"``,
        ``"feather"``, ``"todre"``).
      keep: visual-token keep ratios in (0, 1].
      split, limit: passed to the benchmark's reader.
      batch_size: rows per generation batch (a multiple of the mesh's data axis).
      dtype: ``load_vlm``'s dtype (``"auto"``: the checkpoint's).
      mesh: None, a ``Mesh``, or ``"data=D,model=M"``.
      seed: PRNG seed of methods that need a key (``"random"``).
      fastv_layer: the LLM layer of FastV / FEATHER's pruning (FastV's K = 2).
      bucket: question lengths are padded to a multiple of it (bounded recompilation).
      timing_repeats: timed prefill calls per setting (0: no latency).
      max_batches: stop after this many batches in this call (returns None), for tests and
        partial runs; None runs to the end.
      log: progress printer (default ``print(..., flush=True)``).

    Returns:
      The ``results.json`` dict, or None if ``max_batches`` stopped the run first.

    Raises:
      ValueError: for an unknown method / benchmark, a bad keep or option (before any data
        is read), or a workdir holding a different config.
      ImportError: if transformers / pillow are missing.

    Example:
      >>> import tempfile
      >>> from pruneax.experiments.vlm_bench import run_benchmark
      >>> run_benchmark("ckpt", "pope", "data", workdir=tempfile.mkdtemp(), methods=["nope"])
      Traceback (most recent call last):
      ...
      ValueError: methods: unknown method 'nope'; expected one of [...]
      >>> run_benchmark("ckpt", "pope", "data", workdir="w", keep=[1.5])
      Traceback (most recent call last):
      ...
      ValueError: keep: each budget must be a ratio in (0, 1]; got 1.5
      >>> run_benchmark("path/to/llava-1.5-7b-hf", "pope", "data/pope", workdir="runs/pope",
      ...               methods=["none", "fastervlm", "fastv"], keep=[0.5, 0.111])
      ... # doctest: +SKIP
    """
    settings = parse_settings(methods, keep)
    for name, value in (("batch_size", batch_size), ("bucket", bucket)):
        _positive(name, value)
    _positive("seed", seed, zero=True)
    _positive("fastv_layer", fastv_layer, zero=True)
    _positive("timing_repeats", timing_repeats, zero=True)
    if max_batches is not None:
        _positive("max_batches", max_batches)
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark: unknown {benchmark!r}; expected one of {sorted(BENCHMARKS)}")
    mesh_obj = parse_mesh(mesh)
    log = log or (lambda s: print(s, flush=True))
    bench = BENCHMARKS[benchmark]
    items = bench.read(data, split=split, limit=limit)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {benchmark!r}: item ids are not unique")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    config = dict(checkpoint=str(checkpoint), benchmark=benchmark, data=str(data), split=split,
                  limit=limit, dtype=str(dtype), seed=seed, fastv_layer=fastv_layer,
                  bucket=bucket)  # fmt: skip
    store.check_config(work, config, [s.name for s in settings], write=False)
    prompting.require_transformers()
    from pruneax.models.vlm import load_vlm

    model = load_vlm(checkpoint, dtype=dtype, mesh=mesh_obj)
    processor = prompting.load_processor(checkpoint)
    llm_cfg = model.vlm.config.llm if hasattr(model, "vlm") else model.config.llm
    if any(s.llm in ("fastv", "feather") for s in settings) and fastv_layer >= llm_cfg.num_layers:
        raise ValueError(
            f"fastv_layer must be < the LLM's {llm_cfg.num_layers} layers; got {fastv_layer}"
        )
    store.check_config(work, config, [s.name for s in settings])
    runner = _Runner(model, processor, batch_size=batch_size, bucket=bucket, seed=seed,
                     fastv_layer=fastv_layer, mesh=mesh_obj, log=log)  # fmt: skip
    left = max_batches
    for s in settings:
        finished, used = runner.run_setting(s, items, store.predictions_path(work, s.name), left)
        left = None if left is None else left - used
        if not finished:
            log(f"{_TAG} stopped after max_batches={max_batches}; rerun to continue")
            return None
    rows = []
    for s in settings:
        recs = store.read_predictions(store.predictions_path(work, s.name))
        preds = {i: recs[i]["prediction"] for i in ids}
        score = bench.score(items, preds)
        vis = [recs[i]["visual_tokens"] for i in ids]
        ret = [recs[i]["retained_tokens"] for i in ids]
        rows.append(dict(
            setting=s.name, method=s.method, keep=s.keep, visual_tokens=float(np.mean(vis)),
            retained_tokens=float(np.mean(ret)), main=score.get("main"), score=score,
            prefill_flops=rm.prefill_flops(model, runner.family, s,
                                           [(recs[i]["P"], recs[i]["Q"]) for i in ids],
                                           fastv_layer),
            prefill_latency_s=runner.latency(s, items, timing_repeats), items=len(ids),
        ))  # fmt: skip
    meta = dict(config, family=runner.family, batch_size=batch_size, mesh=str(mesh),
                machine=_machine())  # fmt: skip
    store.write_results(work, rows, meta)
    log(f"{_TAG} wrote {work / 'results.json'}")
    return {**meta, "results": rows}


def _machine() -> str:
    try:
        from pruneax import lab

        return lab.describe(lab.machine())
    except Exception:  # pragma: no cover - description only
        return jax.devices()[0].platform
