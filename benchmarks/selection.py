"""Selection benchmark: every ``pruneax.tokens`` selector, jitted and vmapped, against NumPy and
against this machine's limit for its algorithm.

Run from the repository root with the virtual environment active:

    python -m benchmarks.selection                  # full run (< 15 min on 2 idle CPU cores)
    python -m benchmarks.selection --quick          # smoke run, tiny shapes (< 20 s)
    python -m benchmarks.selection --shapes llava15-d1024 --batches 1,64 --selectors kcenter

The default leaves out batch 64 at the LLaVA-NeXT shape (N=2880): one such call takes minutes.
Writes a markdown report to ``--out`` (default ``results/benchmarks/selection.md``), prints it,
and writes every number (raw repeat times included) next to it as ``<out>.json``.

Selectors: every method registered in ``pruneax.tokens.METHODS`` (read when the run starts),
called through ``pruneax.tokens.select_tokens``, plus the variants of ``VARIANTS``; ``PROFILES``
adds each method's cost model and NumPy reference (a method without one is timed in JAX only).
FlowCut, which selects inside the vision encoder from every block's tensors (not a registry
method), is timed apart on ``VISION_SHAPES``: ``pruneax.tokens.flowcut_select`` on recorded
per-block [CLS] attention rows [S, H, T] and value states [S, H, T, dh] (what ``ViT`` keeps
under ``PruningPlan.flowcut``; the full [S, H, T, T] matrices of LLaVA-1.5's tower at batch 64
would be 30 GB), cost model = those inputs read once plus a rank per pruning block.
VisionDrop / VisionZip's vision stage (``encode_visiondrop``; not a registry method either) is
timed apart on ``VISIONDROP_SHAPES`` (LLaVA-1.5's feature block: N = 576 patches, D = 1024,
metric = the keys averaged over 16 heads, dh = 64; VisionZip's 64 = 54 dominant + 10 contextual
and VisionDrop's 48 = 42 + 6, the CLS being one of the dominant): ``pruneax.tokens.topk`` of
d - 1 patches on scores [N] (a softmax of Gaussian logits), then
``pruneax.tokens.contextual_merge`` of the other R = N - d + 1 patches (hidden states [N, D],
metric [N, dh]) into c contextual tokens; cost model = the scores ranked, the cosine similarity
matmul (R - c) x dh x c and the one-hot assignment matmul c x (R - c) x D (the R remaining
hidden rows read once); NumPy reference ``tests/oracles.py:np_visionzip`` (the published forward).
FoPru's rank strategy (``pruneax.tokens.focal_select``; a ``VisualSelect`` method, not a registry
one: it needs the patch-to-patch attention) is timed apart on ``FOCAL_SHAPES``: LLaVA-1.5's
feature block attention [16, 576, 576] with the [CLS] row and column dropped; cost model = that
attention read once (received and sent sums in one pass) plus the rank of the N significances;
NumPy reference ``tests/oracles.py:np_focal_select`` (the published ``focal_prunning``).

What is measured, per selector, shape and batch B:

- JAX: ``jax.jit(jax.vmap(selector))`` over B examples, compiled ahead of time (compilation is
  the warm-up and is excluded; the first run is also discarded when it is short), then timed
  with ``block_until_ready``; repeats are adaptive (about ``--target-s`` seconds per cell, at
  least ``--min-reps``, fewer for runs over 10 s); reported: median batch time / B = time per
  image. The compiled program is also searched for an N x N array.
- NumPy: the independent NumPy reference of the same algorithm in ``tests/oracles.py`` (the
  report says which and whether its picks match), one example, BLAS limited to one thread
  (``--numpy-threads``), at batch 1 only.
- The machine's limits, measured in the same run: float32 matmul rate (a large square product,
  each shape's Gram product ``[N, D] x [D, N]``, HoloV's chunk products and VisionZip's
  similarity and assignment products), read bandwidth (a jitted repeated gemv, and a repeated
  sum, at working sets in L2, L3 and DRAM and at every phase's own working set) and the
  dispatch floor (a trivial jitted call).

Cost model (per image, float32): each selector is a list of phases with FLOPs, bytes re-read and
a working set; a phase costs ``max(FLOPs / matmul rate, bytes / read bandwidth at its working
set)`` and the limit is the dispatch floor / B plus the phases' sum; "binds" names the largest
term. The working set is one example's: the limit assumes an implementation that keeps one
example's working set in cache, whereas a plain ``vmap`` of a greedy loop streams the whole
batch's working sets every step (the JSON gives the level that would need, too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pruneax.tokens as T
from pruneax import lab

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("results/benchmarks/selection.md")
F32 = 4  # bytes per float32
TEXT_TOKENS = 16  # m, content words of the question (MMTok with text)
ALPHA, TAU_TV, TAU_VV = 0.5, 0.02, 0.2  # MMTok's LLaVA settings
HOLOV_CHUNKS = 16
_HIGHEST = jax.lax.Precision.HIGHEST
FEATHER_STRIDE = 3

# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    n: int
    d: int
    k: int
    grid: tuple[int, int]
    batches: tuple[int, ...]
    note: str


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("llava15-d1024", 576, 1024, 64, (24, 24), (1, 16, 64), "LLaVA-1.5, vision width"),
        Shape("llava15-d4096", 576, 4096, 64, (24, 24), (1, 16, 64), "LLaVA-1.5-7B, LLM width"),
        Shape(
            "llavanext-d4096",
            2880,
            4096,
            320,
            (48, 60),
            (1, 16),
            "LLaVA-NeXT (5 x 576 AnyRes), LLM width; batch 64 left out by default (time)",
        ),
        Shape("llava15-d1024-k192", 576, 1024, 192, (24, 24), (1, 16), "k x 3, for k scaling"),
    ]
}
# --quick only checks that everything runs: no backend optimisation, about 30% less compile time
QUICK_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
QUICK_SHAPES: dict[str, Shape] = {
    "tiny": Shape("tiny", 64, 32, 8, (8, 8), (1, 2), "smoke test"),
}


@dataclasses.dataclass(frozen=True)
class VisionShape:
    """FlowCut's recorded tensors: ``layers`` scoring blocks, ``heads`` H, T = 1 CLS + ``n``
    patches, head width ``dh``; ``k`` patches kept."""

    name: str
    layers: int
    heads: int
    n: int
    dh: int
    k: int
    batches: tuple[int, ...]
    note: str

    @property
    def d(self) -> int:
        return self.dh


FLOWCUT = "flowcut"
VISION_SHAPES: dict[str, VisionShape] = {
    "llava15-vision": VisionShape(
        "llava15-vision", 22, 16, 576, 64, 64, (1, 64),
        "LLaVA-1.5's CLIP-L/336 (24 blocks, features hidden_states[-2]): the published "
        "select_layer 22 = 22 scoring blocks of 24; CLS rows [S, H, T] + values [S, H, T, dh]",
    ),
}  # fmt: skip
QUICK_VISION_SHAPES: dict[str, VisionShape] = {
    "tiny-vision": VisionShape("tiny-vision", 4, 2, 64, 8, 8, (1, 2), "smoke test"),
}


@dataclasses.dataclass(frozen=True)
class VisionDropShape:
    """VisionDrop / VisionZip's vision stage at one feature block: ``n`` patches of width ``d``,
    metric = the block's keys averaged over heads (width ``dh``); ``k`` tokens in all = the CLS
    + ``patches`` dominant patches + ``contextual`` contextual tokens."""

    name: str
    n: int
    d: int
    dh: int
    k: int
    contextual: int
    batches: tuple[int, ...]
    note: str

    @property
    def patches(self) -> int:
        """Dominant patches selected: the published ``dominant`` count less the CLS token."""
        return self.k - self.contextual - 1

    @property
    def remaining(self) -> int:
        """R: the patches left to merge into the contextual tokens."""
        return self.n - self.patches


VISIONDROP = "visiondrop"
_LLAVA15_BLOCK = "LLaVA-1.5's CLIP-L/336 feature block (hidden_states[-2]), keys 16 heads x 64"
VISIONDROP_SHAPES: dict[str, VisionDropShape] = {
    "llava15-visionzip-k64": VisionDropShape(
        "llava15-visionzip-k64", 576, 1024, 64, 64, 10, (1, 64),
        f"{_LLAVA15_BLOCK}; VisionZip's 64 = 54 dominant (CLS + 53 patches) + 10 contextual",
    ),
    "llava15-visiondrop-k48": VisionDropShape(
        "llava15-visiondrop-k48", 576, 1024, 64, 48, 6, (1, 64),
        f"{_LLAVA15_BLOCK}; VisionDrop's 48 = 42 dominant (CLS + 41 patches) + 6 contextual",
    ),
}  # fmt: skip
QUICK_VISIONDROP_SHAPES: dict[str, VisionDropShape] = {
    "tiny-visiondrop": VisionDropShape("tiny-visiondrop", 64, 32, 8, 8, 2, (1, 2), "smoke test"),
}


@dataclasses.dataclass(frozen=True)
class FocalShape:
    """FoPru in the vision encoder: the patch-to-patch attention [heads, n, n] of one block (the
    [CLS] row and column dropped, so neither rows nor columns sum to 1); ``k`` patches kept."""

    name: str
    heads: int
    n: int
    k: int
    batches: tuple[int, ...]
    note: str

    @property
    def d(self) -> int:
        return self.n


FOCAL = "fopru"
FOCAL_SHAPES: dict[str, FocalShape] = {
    "llava15-fopru-k64": FocalShape(
        "llava15-fopru-k64", 16, 576, 64, (1, 64),
        f"{_LLAVA15_BLOCK}: its attention [16, 576, 576] among the patches; FoPru's rank "
        "strategy keeps 64",
    ),
}  # fmt: skip
QUICK_FOCAL_SHAPES: dict[str, FocalShape] = {
    "tiny-fopru": FocalShape("tiny-fopru", 2, 64, 8, (1, 2), "smoke test"),
}

# ---------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a selector: FLOPs, bytes read from memory, working set (all per example)."""

    name: str
    flops: float
    bytes: float
    working_set: float
    # which measured matmul rate applies: "gram", "chunk" (HoloV), "sim" or "assign" (VisionZip)
    matmul: str = "gram"


def _cost_topk(s: Shape) -> list[Phase]:
    return [Phase("rank + top-k", 0.0, 2 * s.n * F32, s.n * F32)]


def _cost_random(s: Shape) -> list[Phase]:
    return [Phase("permutation", 0.0, 2 * s.n * F32, 2 * s.n * F32)]


def _cost_maxmin(s: Shape) -> list[Phase]:
    n, d, k = s.n, s.d, s.k
    gram = n * n * F32
    return [
        Phase("Gram matmul", 2.0 * n * n * d, n * d * F32 + gram, n * d * F32 + gram),
        Phase("nearest-other pass", 2.0 * n * n, gram, gram),
        Phase("greedy rows", 2.0 * k * n, 3 * k * n * F32, gram),
    ]


def _cost_matvec_greedy(s: Shape) -> list[Phase]:
    n, d, k = s.n, s.d, s.k
    return [
        Phase("row norms", 2.0 * n * d, n * d * F32, n * d * F32),
        Phase("greedy matvecs", 2.0 * k * n * d, k * n * d * F32, n * d * F32),
    ]


def _cost_coverage(m: int) -> Callable[[Shape], list[Phase]]:
    def cost(s: Shape) -> list[Phase]:
        n, d, k = s.n, s.d, s.k
        c = (m + n) * n * F32
        return [
            Phase(
                "similarity matmuls",
                2.0 * (m + n) * n * d,
                (n + m) * d * F32 + c,
                n * d * F32 + c,
            ),
            Phase("greedy gains", 3.0 * k * (m + n) * n, k * c, c),
        ]

    return cost


def _cost_hiprune(s: Shape) -> list[Phase]:
    return [Phase("rank + top-k", 0.0, 4 * s.n * F32, 2 * s.n * F32)]


def _cost_holov(s: Shape) -> list[Phase]:
    n, d = s.n, s.d
    w = math.ceil(n / HOLOV_CHUNKS)
    return [
        Phase("chunk Grams", 2.0 * n * w * d, n * d * F32 + n * w * F32, n * d * F32, "chunk"),
        Phase("rank + top-k", 0.0, 3 * n * F32, 2 * n * F32),
    ]


def _cost_uniform(s: Shape) -> list[Phase]:
    return [Phase("constant indices", 0.0, s.k * F32, s.k * F32)]


def _cost_flowcut(v: VisionShape) -> list[Phase]:
    """Per block: the CLS row and the values read once (semantic logits, value mean, L1 norm:
    ~3 H T dh FLOPs); every other block ranks the N patches and masks them."""
    t = v.n + 1
    inputs = v.layers * v.heads * t * (v.dh + 1) * F32
    ranks = (v.layers + 1) // 2
    return [
        Phase("scores: CLS rows + values read once", 3.0 * v.layers * v.heads * t * v.dh,
              inputs, inputs),
        Phase("rank + mask (pruning blocks)", 0.0, ranks * 3 * v.n * F32, 3 * v.n * F32),
    ]  # fmt: skip


def _visiondrop_products(v: VisionDropShape) -> dict[str, tuple[int, int, int]]:
    """VisionZip's two matmuls as ``(m, kdim, n)``: the cosine similarities of the R - c merged
    patches with the c targets, and the one-hot assignment summing their hidden states."""
    c, o = v.contextual, v.remaining - v.contextual
    return {"sim": (o, v.dh, c), "assign": (c, o, v.d)}


def _cost_visiondrop(v: VisionDropShape) -> list[Phase]:
    """The N scores ranked; the R remaining metric rows read once, L2-normalised (3 R dh) and
    compared with the c targets (2 (R - c) c dh), the similarities written and read by the
    argmax; the one-hot assignment matmul (2 c (R - c) D) with the R remaining hidden rows and
    the one-hot matrix read once and the c contextual tokens written."""
    n, r, c, dh = v.n, v.remaining, v.contextual, v.dh
    o = r - c
    sim = (r * dh + 2 * o * c) * F32
    assign = (r * v.d + o * c + c * v.d) * F32
    return [
        Phase("rank + top-k", 0.0, 2 * n * F32, n * F32),
        Phase("cosine similarity matmul", 2.0 * o * c * dh + 3.0 * r * dh, sim, sim, "sim"),
        Phase("one-hot assignment matmul", 2.0 * c * o * v.d, assign, assign, "assign"),
    ]


def _cost_focal(v: FocalShape) -> list[Phase]:
    """The attention [H, N, N] read once, in one pass that sums each row and each column over
    heads (2 H N^2 FLOPs: the received and sent means), then the two variances and the rank of
    the N significances."""
    attn = v.heads * v.n * v.n * F32
    return [
        Phase("attention read once: received and sent sums", 2.0 * v.heads * v.n * v.n,
              attn, attn),
        Phase("variances + rank + top-k", 4.0 * v.n, 4 * v.n * F32, 2 * v.n * F32),
    ]  # fmt: skip


def _cost_inputs(inputs: tuple[str, ...]) -> Callable[[Shape], list[Phase]]:
    """No cost model: the per-example inputs read once (a method missing from PROFILES)."""

    def cost(s: Shape) -> list[Phase]:
        size = {"features": s.n * s.d, "vision_features": s.n * s.d, "text": TEXT_TOKENS * s.d}
        nbytes = sum(size.get(i, s.n) for i in inputs) * F32
        return [Phase("inputs read once (no cost model)", 0.0, nbytes, nbytes)]

    return cost


def load_oracles() -> Any | None:
    """``tests/oracles.py`` as a module, or None when it is absent or does not import."""
    path = REPO_ROOT / "tests" / "oracles.py"
    try:
        spec = importlib.util.spec_from_file_location("_pruneax_bench_oracles", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # a broken oracle file must not break the benchmark
        print(f"[selection] tests/oracles.py does not import ({e!r}); no NumPy baselines")
        return None
    return module


# ---------------------------------------------------------------------------------------------
# Selectors: every method of the registry (pruneax.tokens.METHODS), plus variants
# ---------------------------------------------------------------------------------------------

# A NumPy caller gets (shape, one example as a dict of NumPy arrays, the function) and runs it.
NpCaller = Callable[[Shape, dict[str, np.ndarray], Callable[..., np.ndarray]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Profile:
    """What the benchmark knows of a method beyond the registry: its cost model, whether it is
    a greedy loop / needs an N x N matrix, and its NumPy reference in ``tests/oracles.py``."""

    cost: Callable[[Shape], list[Phase]]
    greedy: bool = False
    needs_nn: bool = False
    oracle: str | None = None
    np_call: NpCaller | None = None
    note: str = ""


_COVERAGE = {"alpha": ALPHA, "tau_tv": TAU_TV, "tau_vv": TAU_VV}
OPTIONS: dict[str, dict[str, Any]] = {  # registry options that differ from its defaults
    "coverage": _COVERAGE,
    "feather": {"stride": FEATHER_STRIDE},
    "holov": {"num_chunks": HOLOV_CHUNKS},
}
PROFILES: dict[str, Profile] = {
    "topk": Profile(_cost_topk, oracle="np_topk", np_call=lambda s, e, f: f(e["scores"], s.k)),
    "random": Profile(
        _cost_random,
        oracle="np_random",
        np_call=lambda s, e, f: f(e["rng"], s.n, s.k),
        note="NumPy: Generator.permutation[:k] (different picks by construction)",
    ),
    "uniform": Profile(_cost_uniform, oracle="np_uniform", np_call=lambda s, e, f: f(s.k, s.grid)),
    "divprune": Profile(
        _cost_maxmin, True, True, "np_maxmin_diversity", lambda s, e, f: f(e["features"], s.k)
    ),
    "kcenter": Profile(
        _cost_matvec_greedy,
        True,
        False,
        "np_kcenter",
        lambda s, e, f: f(e["features"], s.k, e["scores"], "cosine"),
        "cosine, pivot = argmax of a score array",
    ),
    "maxsum": Profile(
        _cost_matvec_greedy,
        True,
        False,
        "np_maxsum_diversity",
        lambda s, e, f: f(e["features"], s.k, e["scores"]),
        "pivot = argmax of a score array",
    ),
    "coverage": Profile(
        _cost_coverage(0),
        True,
        True,
        "np_coverage",
        lambda s, e, f: f(e["features"], s.k, None, None, **_COVERAGE),
        "vision only, x_vision = x",
    ),
    "coverage_text": Profile(
        _cost_coverage(TEXT_TOKENS),
        True,
        True,
        "np_coverage",
        lambda s, e, f: f(e["features"], s.k, e["text"], None, **_COVERAGE),
        f"text m = {TEXT_TOKENS}, x_vision = x",
    ),
    "hiprune": Profile(
        _cost_hiprune,
        oracle="np_hiprune",
        np_call=lambda s, e, f: f(e["shallow_scores"], e["deep_scores"], s.k, s.grid),
    ),
    "feather": Profile(
        _cost_topk,
        oracle="np_feather",
        np_call=lambda s, e, f: f(e["scores"], s.k, s.grid, FEATHER_STRIDE),
    ),
    "holov": Profile(
        _cost_holov,
        oracle="np_holov",
        np_call=lambda s, e, f: f(e["scores"], e["features"], s.k, HOLOV_CHUNKS),
    ),
}
# Variants: benchmark name -> (registry method, optional inputs it also gets).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {"coverage_text": ("coverage", ("text",))}


@dataclasses.dataclass(frozen=True)
class Selector:
    name: str
    method: str  # the registry method
    inputs: tuple[str, ...]  # batched inputs (registry input names), in call order
    cost: Callable[[Shape], list[Phase]]
    greedy: bool
    needs_nn: bool
    oracle: str | None  # name in tests/oracles.py
    np_call: NpCaller | None
    note: str = ""

    def make(self, s: Shape) -> Callable[..., jax.Array]:
        """The one-example JAX function of this selector at shape ``s``."""
        m = T.get_method(self.method)
        static = {"grid": s.grid} if "grid" in m.needs | m.optional else {}
        kw = {**static, **OPTIONS.get(self.method, {})}
        used = [i in m.needs | m.optional for i in self.inputs]

        def fn(*args):
            given = {i: a for i, a, u in zip(self.inputs, args, used, strict=True) if u}
            return T.select_tokens(self.method, s.k, **given, **kw)

        return fn


def selector(name: str) -> Selector:
    """The benchmark's ``Selector`` for a registry method or a variant (see ``VARIANTS``)."""
    method, extra = VARIANTS.get(name, (name, ()))
    m = T.get_method(method)
    # A method without per-example inputs (uniform) still gets the scores to carry the batch.
    inputs = tuple(i for i in T.INPUTS if i in m.needs | set(extra) and i != "grid")
    inputs = inputs or ("scores",)
    prof = PROFILES.get(name) or Profile(_cost_inputs(inputs), note="no cost model, no NumPy")
    fields = {f.name: getattr(prof, f.name) for f in dataclasses.fields(Profile)}
    return Selector(name=name, method=method, inputs=inputs, **fields)


def selectors() -> dict[str, Selector]:
    """Every method registered now, then the variants."""
    return {n: selector(n) for n in [*T.METHODS, *VARIANTS]}


SELECTORS: dict[str, Selector] = selectors()
# FlowCut is timed on VISION_SHAPES with its own inputs (``flowcut_cell``), not ``make``.
FLOWCUT_SELECTOR = Selector(
    FLOWCUT, FLOWCUT, ("attn", "values"), _cost_flowcut, False, False, None, None,
    "flowcut_select on recorded CLS rows + values (vision encoder, not the registry)",
)  # fmt: skip
# VisionDrop / VisionZip's vision stage: on VISIONDROP_SHAPES with its own inputs
# (``visiondrop_cell``), NumPy reference ``np_visionzip`` on one example.
VISIONDROP_SELECTOR = Selector(
    VISIONDROP, VISIONDROP, ("scores", "x", "metric"), _cost_visiondrop, False, False,
    "np_visionzip",
    lambda v, e, f: f(e["scores"], e["x"], e["metric"], v.patches, v.contextual),
    "topk + contextual_merge (VisionZip / VisionDrop vision stage, not the registry)",
)  # fmt: skip

# FoPru (rank): on FOCAL_SHAPES with the patch-to-patch attention (``focal_cell``), NumPy
# reference ``np_focal_select`` (the published ``focal_prunning``) on one example.
FOCAL_SELECTOR = Selector(
    FOCAL, FOCAL, ("attn",), _cost_focal, False, False, "np_focal_select",
    lambda v, e, f: f(e["attn"], v.k),
    "focal_select (rank) on one block's patch-to-patch attention (vision encoder, not the "
    "registry)",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
    target_s: float = 0.5  # aim for about this much timed work per cell
    min_reps: int = 3
    max_reps: int = 50
    warmup_below_s: float = 1.0  # the first run is discarded when shorter than this
    slow_s: float = 10.0  # a cell whose run takes longer than this gets only ``slow_reps`` runs
    slow_reps: int = 2
    max_cell_s: float = 45.0  # ... and never more runs than fit in this (at least one)


def _once(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - t0


def time_calls(call: Callable[[], Any], timing: Timing) -> list[float]:
    """Seconds of repeated ``call()``: adaptive count, first (warm-up) run dropped when short."""
    t = _once(call)
    times = [] if t < timing.warmup_below_s else [t]
    if not times:
        times.append(_once(call))
    reps = min(timing.max_reps, max(timing.min_reps, math.ceil(timing.target_s / times[0])))
    if times[0] >= timing.slow_s:
        reps = min(reps, timing.slow_reps, max(1, int(timing.max_cell_s // times[0])))
    while len(times) < reps:
        times.append(_once(call))
    return times


# ---------------------------------------------------------------------------------------------
# Machine description and limits
# ---------------------------------------------------------------------------------------------


def _jit(fn: Callable, copts: dict[str, Any] | None) -> Callable:
    return jax.jit(fn, compiler_options=copts) if copts else jax.jit(fn)


def _best_time(call: Callable[[], Any], reps: int) -> float:
    jax.block_until_ready(call())
    return min(_once(call) for _ in range(reps))


def measure_dispatch(copts: dict[str, Any] | None = None) -> float:
    f = _jit(lambda v: v + 1, copts)
    v = jnp.zeros((1,), jnp.float32)
    jax.block_until_ready(f(v))
    return statistics.median(_once(lambda: f(v)) for _ in range(200))


def measure_loop_step(n: int, k: int, reps: int, copts: dict[str, Any] | None = None) -> float:
    """Seconds per step of a jitted ``fori_loop`` whose body is a greedy step's bare minimum.

    Body: masked argmax over N, a min-update of an [N] vector, a mask update. Not part of the
    limit (it is XLA's cost, not the algorithm's); reported so that a greedy selector's distance
    from its limit can be split into work and per-step overhead.
    """

    def f(v):
        def body(i, carry):
            mind, avail = carry
            c = jnp.argmax(jnp.where(avail, mind, -jnp.inf))
            return jnp.minimum(mind, mind[c] * 0.5 + v), avail.at[c].set(False)

        return jax.lax.fori_loop(0, k, body, (v, jnp.ones((n,), bool)))[0]

    f = _jit(f, copts)
    v = jnp.asarray(np.random.default_rng(0).random(n, dtype=np.float32))
    return _best_time(lambda: f(v), reps) / k


def measure_matmul(
    m: int,
    kdim: int,
    n: int,
    reps: int,
    *,
    batch: int = 1,
    total_flops: float = 2e9,
    copts: dict[str, Any] | None = None,
) -> float:
    """GFLOP/s of a jitted float32 [batch, m, kdim] x [batch, kdim, n] product (best of ``reps``).

    The product runs ``iters`` times in a loop inside one jitted call (each depending on the
    last), so small products are not measured against the dispatch floor.
    """
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((batch, m, kdim), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((batch, kdim, n), dtype=np.float32))
    flops = 2.0 * batch * m * kdim * n
    iters = max(1, int(total_flops // flops))

    def f(a, b):
        def body(i, acc):
            prod = jnp.einsum("cmk,ckn->cmn", a + acc[0, 0, 0] * 1e-30, b, precision=_HIGHEST)
            return acc + prod

        return jax.lax.fori_loop(0, iters, body, jnp.zeros((batch, m, n), jnp.float32))

    f = _jit(f, copts)

    return iters * flops / _best_time(lambda: f(a, b), reps) / 1e9


def measure_matmul_numpy(
    m: int, kdim: int, n: int, *, batch: int = 1, threads: int | None, seconds: float
) -> float:
    """GFLOP/s of NumPy's (BLAS) float32 [batch, m, kdim] x [batch, kdim, n], best single run."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, m, kdim), dtype=np.float32)
    b = rng.standard_normal((batch, kdim, n), dtype=np.float32)
    if batch == 1:
        a, b = a[0], b[0]
    with _blas_threads(threads):
        np.matmul(a, b)
        best, stop = math.inf, time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            np.matmul(a, b)
            t1 = time.perf_counter()
            best = min(best, t1 - t0)
            if t1 > stop:
                break
    return 2.0 * batch * m * kdim * n / best / 1e9


def measure_read_bandwidth(
    nbytes: int,
    total_bytes: float,
    reps: int,
    *,
    with_sum: bool = True,
    copts: dict[str, Any] | None = None,
) -> dict[str, float]:
    """GB/s reading a float32 working set of ``nbytes`` over and over (jitted, one stream).

    ``sum``: a reduction of the whole array per iteration; ``gemv``: a matrix-vector product
    ``[nbytes / 4096, 1024] x [1024]`` per iteration (the greedy selectors' inner operation).
    Each iteration depends on the previous one, so XLA cannot hoist it out of the loop.
    """
    iters = max(1, int(total_bytes // nbytes))
    cols = 1024
    rows = max(1, nbytes // (F32 * cols))
    nbytes = rows * cols * F32
    x = jnp.ones((rows * cols,), jnp.float32)
    xm = x.reshape(rows, cols)
    v = jnp.ones((cols,), jnp.float32)

    def rsum(x):
        body = lambda i, acc: acc + jnp.sum(x + acc * 1e-30)
        return jax.lax.fori_loop(0, iters, body, jnp.float32(0))

    def gemv(xm, v):
        body = lambda i, acc: acc + jnp.matmul(xm, v + acc[0] * 1e-30)
        return jax.lax.fori_loop(0, iters, body, jnp.zeros((rows,), jnp.float32))

    rsum, gemv = _jit(rsum, copts), _jit(gemv, copts)

    out = {
        "bytes": nbytes,
        "sum": iters * nbytes / _best_time(lambda: rsum(x), reps) / 1e9 if with_sum else None,
        "gemv": iters * nbytes / _best_time(lambda: gemv(xm, v), reps) / 1e9,
    }
    out["best"] = max(v for v in (out["sum"], out["gemv"]) if v is not None)
    return out


def measure_allcore_bandwidth(nbytes: int, seconds: float) -> float | None:
    """Aggregate GB/s of one NumPy gemv stream per core (BLAS limited to 1 thread each)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    threads = os.cpu_count() or 1
    cols = 1024
    rows = max(1, nbytes // (F32 * cols))
    mats = [np.ones((rows, cols), np.float32) for _ in range(threads)]
    v = np.ones(cols, np.float32)
    counts = [0] * threads
    with threadpool_limits(1):
        for m in mats:
            m @ v  # warm
        stop = time.perf_counter() + seconds

        def work(i: int) -> None:
            c = 0
            while time.perf_counter() < stop:
                mats[i] @ v
                c += 1
            counts[i] = c

        t0 = time.perf_counter()
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
    return sum(counts) * rows * cols * F32 / elapsed / 1e9


def _matmul_key(s: Any, kind: str) -> str:
    if kind == "gram":
        return f"Gram {s.n}x{s.d}x{s.n}"
    if kind == "chunk":
        w = math.ceil(s.n / HOLOV_CHUNKS)
        return f"{HOLOV_CHUNKS} chunks {w}x{s.d}x{w}"
    m, kdim, n = _visiondrop_products(s)[kind]
    return f"VisionZip {'similarity' if kind == 'sim' else 'assignment'} {m}x{kdim}x{n}"


def _ws_key(nbytes: float) -> str:
    """Working sets are probed rounded to 4 KiB (the key of ``limits["bandwidth_at"]``)."""
    return str(max(1, round(nbytes / 4096)) * 4096)


def measure_limits(
    shapes: Sequence[Shape],
    machine: dict[str, Any],
    quick: bool,
    copts: dict[str, Any] | None = None,
    selectors: Sequence[Selector] = (),
    phases: Sequence[Phase] = (),
    matmuls: dict[str, tuple[int, int, int]] | None = None,
) -> dict:
    """The machine's limits; ``phases`` (beyond the selectors' on ``shapes``) add working sets
    to probe, ``matmuls`` ({key: (m, kdim, n)}) products whose rate to measure."""
    l2, l3 = machine["l2_bytes_per_core"], machine["l3_bytes"]
    reps = 2 if quick else 5
    square = 256 if quick else 2048
    flops = 5e7 if quick else 2e9
    limits: dict[str, Any] = {"dispatch_s": measure_dispatch(copts)}
    limits["loop_step_s"] = {
        f"N={n}, k={k}": measure_loop_step(n, k, reps, copts)
        for n, k in sorted({(s.n, s.k) for s in shapes})
    }
    seconds = 0.02 if quick else 0.3

    def rate(m: int, kdim: int, n: int, batch: int = 1) -> dict[str, float]:
        # XLA, and NumPy's BLAS with one thread and with its default threads: the machine
        # can do what the best of them does.
        out = {
            "xla": measure_matmul(m, kdim, n, reps, batch=batch, total_flops=flops, copts=copts),
            "numpy_1": measure_matmul_numpy(m, kdim, n, batch=batch, threads=1, seconds=seconds),
            "numpy_all": measure_matmul_numpy(
                m, kdim, n, batch=batch, threads=None, seconds=seconds
            ),
        }
        out["best"] = max(out.values())
        return out

    rates = {f"square {square}": rate(square, square, square)}
    for s in shapes:
        w = math.ceil(s.n / HOLOV_CHUNKS)
        for kind, (c, m) in (("gram", (1, s.n)), ("chunk", (HOLOV_CHUNKS, w))):
            key = _matmul_key(s, kind)
            if key not in rates:
                rates[key] = rate(m, s.d, m, batch=c)
    for key, (m, kdim, n) in (matmuls or {}).items():
        if key not in rates:
            rates[key] = rate(m, kdim, n)
    limits["matmul_gflops"] = rates
    sizes = {
        "L2": l2 // 2,
        "L3": min(l3 // 4, 8 << 20),
        "DRAM": (64 << 20) if quick else max(512 << 20, 16 * l3),
    }
    total = (64 << 20) if quick else (1 << 30)
    limits["bandwidth"] = {}
    for level, nbytes in sizes.items():
        bw = measure_read_bandwidth(
            nbytes, max(total, 2 * nbytes), reps, with_sum=not quick, copts=copts
        )
        bw["allcore_numpy"] = measure_allcore_bandwidth(nbytes, 0.05 if quick else 0.3)
        limits["bandwidth"][level] = bw
        gc.collect()
    # Each phase's own working set beyond L2 (the cache boundaries are not sharp: a 45 MiB
    # working set still hits a 32 MiB L3 in part), probed with the same repeated gemv.
    sets = sorted(
        {
            int(_ws_key(ph.working_set))
            for s in shapes
            for sel in selectors
            for ph in sel.cost(s)
            if ph.working_set > l2
        }
        | {int(_ws_key(ph.working_set)) for ph in phases if ph.working_set > l2}
    )
    limits["bandwidth_at"] = {}
    for nbytes in sets:
        bw = measure_read_bandwidth(
            nbytes, max(total, 2 * nbytes), reps, with_sum=False, copts=copts
        )
        limits["bandwidth_at"][str(nbytes)] = bw["gemv"]
        gc.collect()
    return limits


def level_for(working_set: float, machine: dict[str, Any]) -> str:
    if working_set <= machine["l2_bytes_per_core"]:
        return "L2"
    if working_set <= machine["l3_bytes"]:
        return "L3"
    return "DRAM"


def read_bandwidth(limits: dict[str, Any], working_set: float, level: str) -> float:
    """GB/s for re-reading ``working_set`` bytes: the best probe at that size or larger.

    Read bandwidth cannot grow with the working set, so a probe at a larger size that ran
    faster (the probes are noisy on a shared machine) still bounds what this size can reach.
    """
    probes = [(float(b), v) for b, v in limits.get("bandwidth_at", {}).items()]
    probes += [(bw["bytes"], bw["best"]) for bw in limits["bandwidth"].values()]
    ws = float(_ws_key(working_set))
    at_or_above = [v for b, v in probes if b >= ws]
    if not any(b == ws for b, _ in probes):  # not probed: its cache level's probe and above
        lvl = limits["bandwidth"][level]["bytes"]
        at_or_above = [v for b, v in probes if b >= lvl]
    return max(at_or_above)


def limit_for(
    sel: Selector, s: Shape, batch: int, machine: dict, limits: dict, allcore: bool = False
) -> dict[str, Any]:
    """Per-image lower bound on time: dispatch / B + sum over phases of max(FLOP, byte) time."""
    rates = limits["matmul_gflops"]
    # The best rate measured, so the limit stays a lower bound when a probe runs slow.
    peak = max(v["best"] for key, v in rates.items() if key.startswith("square"))
    cost = sel.cost(s)
    rate = {
        kind: max(peak, rates.get(_matmul_key(s, kind), {}).get("best", 0.0))
        for kind in dict.fromkeys(ph.matmul for ph in cost)
    }
    terms = [("dispatch", limits["dispatch_s"] / batch)]
    phases = []
    for ph in cost:
        level = level_for(ph.working_set, machine)
        bw = limits["bandwidth"][level]
        gbs = read_bandwidth(limits, ph.working_set, level)
        if allcore:
            gbs = max(gbs, bw.get("allcore_numpy") or 0.0)
        t_flop = ph.flops / (rate[ph.matmul] * 1e9)
        t_byte = ph.bytes / (gbs * 1e9)
        bound = "FLOPs" if t_flop >= t_byte else f"{level} bytes"
        terms.append((f"{bound} ({ph.name})", max(t_flop, t_byte)))
        phases.append(
            {
                "name": ph.name,
                "flops": ph.flops,
                "bytes": ph.bytes,
                "working_set": ph.working_set,
                "level": level,
                "level_batch_vmap": level_for(ph.working_set * batch, machine),
                "read_gbs": gbs,
                "flop_s": t_flop,
                "byte_s": t_byte,
                "binds": bound,
            }
        )
    total = sum(t for _, t in terms)
    return {
        "limit_s": total,
        "binds": max(terms, key=lambda t: t[1])[0],
        "phases": phases,
    }


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _nn_in_hlo(hlo: str, n: int) -> bool:
    """Whether the compiled program holds an array with two dimensions of size ``n``."""
    for dims in re.findall(r"\b[a-z]+[0-9]*\[([0-9,]+)\]", hlo):
        if [int(v) for v in dims.split(",") if v].count(n) >= 2:
            return True
    return False


def make_inputs(s: Shape, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "features": rng.standard_normal((batch, s.n, s.d), dtype=np.float32),
        "scores": rng.random((batch, s.n), dtype=np.float32),
        "shallow_scores": rng.random((batch, s.n), dtype=np.float32),
        "deep_scores": rng.random((batch, s.n), dtype=np.float32),
        "text": rng.standard_normal((batch, TEXT_TOKENS, s.d), dtype=np.float32),
    }


def _device_args(sel: Selector, data: dict[str, np.ndarray], batch: int, seed: int) -> list:
    args = []
    for name in sel.inputs:
        if name == "key":
            args.append(jax.random.split(jax.random.key(seed), batch))
        else:
            args.append(jnp.asarray(data[name][:batch]))
    return args


def _blas_threads(n: int | None):
    """A context limiting NumPy's BLAS to ``n`` threads (no-op when None or no threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        n = None
    return contextlib.nullcontext() if n is None else threadpool_limits(n)


def run_numpy(
    sel: Selector,
    s: Shape,
    example: dict[str, Any],
    oracles: Any | None,
    timing: Timing,
    threads: int | None = 1,
) -> tuple[dict[str, Any], np.ndarray] | None:
    """The NumPy reference of ``sel`` (``tests/oracles.py``) on one example, timed; None when
    there is none."""
    fn = getattr(oracles, sel.oracle, None) if sel.oracle and oracles is not None else None
    if fn is None or sel.np_call is None:
        return None
    call = lambda: sel.np_call(s, example, fn)
    with _blas_threads(threads):
        t0 = time.perf_counter()
        picks = call()
        first = time.perf_counter() - t0
        # Slow baselines: the first call counts (NumPy has no compilation to warm up), and one
        # more run below 5 s; otherwise adaptive.
        if first >= 5.0:
            times = [first]
        elif first >= 1.0:
            times = [first, _once(call)]
        else:
            reps = dataclasses.replace(timing, max_reps=min(timing.max_reps, 20))
            times = time_calls(call, reps)
    source = f"tests/oracles.py:{sel.oracle}"
    return {"source": source, "times_s": times, "per_image_s": statistics.median(times)}, picks


def run_cell(
    sel: Selector,
    s: Shape,
    batch: int,
    data: dict[str, np.ndarray],
    timing: Timing,
    seed: int,
    copts: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    args = _device_args(sel, data, batch, seed)
    return time_jitted(jax.jit(jax.vmap(sel.make(s))), args, s.n, batch, timing, copts)


def time_jitted(
    fn: Callable, args: Sequence[Any], n: int, batch: int, timing: Timing, copts: Any
) -> tuple[dict[str, Any], Any]:
    """Compiles ``fn(*args)`` ahead of time and times it (``run_cell``'s row and picks: the
    last run's output as NumPy, a tuple of arrays when ``fn`` returns one)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile(compiler_options=copts)
    compile_s = time.perf_counter() - t0
    hlo = compiled.as_text() or ""
    last: list[jax.Array] = []

    def call() -> jax.Array:
        last[:] = [compiled(*args)]
        return last[0]

    times = time_calls(call, timing)
    # the last timed run's output (no extra run of a slow cell)
    picks = jax.tree.map(np.asarray, last[0])
    med = statistics.median(times)
    row = {
        "batch_time_s": med,
        "per_image_s": med / batch,
        "min_batch_time_s": min(times),
        "times_s": times,
        "reps": len(times),
        "compile_s": compile_s,
        "nn_in_hlo": _nn_in_hlo(hlo, n),
    }
    return row, picks


def flowcut_inputs(v: VisionShape, batch: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """Random recorded tensors made on the device (no host copy): CLS rows [B, S, H, T] (a
    softmax of Gaussian logits) and values [B, S, H, T, dh], float32."""
    shape = (batch, v.layers, v.heads, v.n + 1)

    @jax.jit
    def make(key):
        ka, kv = jax.random.split(key)
        rows = jax.nn.softmax(3.0 * jax.random.normal(ka, shape), axis=-1)
        return rows, jax.random.normal(kv, (*shape, v.dh))

    return make(jax.random.key(seed))


def flowcut_cell(
    v: VisionShape, batch: int, timing: Timing, seed: int, copts: Any = None
) -> tuple[dict[str, Any], np.ndarray]:
    """``jax.jit(jax.vmap(flowcut_select))`` over ``batch`` examples, timed as ``run_cell``."""
    args = flowcut_inputs(v, batch, seed)
    fn = jax.jit(jax.vmap(lambda a, x: T.flowcut_select(a, x, v.k)[0]))
    out = time_jitted(fn, args, v.n, batch, timing, copts)
    del args
    gc.collect()
    return out


def visiondrop_inputs(v: VisionDropShape, batch: int, seed: int) -> tuple[jax.Array, ...]:
    """Random inputs made on the device (no host copy), float32: scores [B, N] (a softmax of
    Gaussian logits, as FlowCut's CLS rows), hidden states [B, N, D], metric [B, N, dh]."""

    @jax.jit
    def make(key):
        ks, kx, km = jax.random.split(key, 3)
        scores = jax.nn.softmax(3.0 * jax.random.normal(ks, (batch, v.n)), axis=-1)
        x = jax.random.normal(kx, (batch, v.n, v.d))
        return scores, x, jax.random.normal(km, (batch, v.n, v.dh))

    return make(jax.random.key(seed))


def visiondrop_one(v: VisionDropShape) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """One example of ``encode_visiondrop``'s vision stage: ``(contextual tokens [c, D],
    dominant patch indices [d - 1])`` from scores [N], hidden states [N, D], metric [N, dh]."""

    def one(scores, x, metric):
        dom = T.topk(scores, v.patches)
        tokens, _ = T.contextual_merge(x, metric, dom, v.contextual)
        return tokens, dom

    return one


def visiondrop_cell(
    v: VisionDropShape, batch: int, timing: Timing, seed: int, copts: Any = None
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """``jax.jit(jax.vmap(visiondrop_one(v)))`` over ``batch`` examples, timed as ``run_cell``:
    ``(row, (tokens [B, c, D], dominant [B, d - 1]), example 0's inputs as NumPy)``."""
    args = visiondrop_inputs(v, batch, seed)
    fn = jax.jit(jax.vmap(visiondrop_one(v)))
    cell, out = time_jitted(fn, args, v.n, batch, timing, copts)
    example = {
        name: np.asarray(a[0]) for name, a in zip(VISIONDROP_SELECTOR.inputs, args, strict=True)
    }
    del args
    gc.collect()
    return cell, out, example


def visiondrop_numpy(
    v: VisionDropShape,
    out: tuple[np.ndarray, np.ndarray],
    example: dict[str, np.ndarray],
    oracles: Any | None,
    timing: Timing,
    threads: int | None = 1,
) -> dict[str, Any] | None:
    """``np_visionzip`` on ``example`` (example 0 of a cell whose output is ``out``), timed, and
    compared with JAX's: dominant overlap (``agree``) and the contextual tokens."""
    got = run_numpy(VISIONDROP_SELECTOR, v, example, oracles, timing, threads)
    if got is None:
        return None
    nrow, (np_tokens, np_dom) = got
    tokens, dom = out[0][0], out[1][0]
    diff = float(np.max(np.abs(np.asarray(np_tokens, np.float32) - tokens)))
    nrow["agree"] = np.intersect1d(np.asarray(np_dom), dom).size / v.patches
    nrow["numpy_picks"] = int(np.asarray(np_dom).size)
    nrow["tokens_max_abs_diff"] = diff
    nrow["tokens_match"] = bool(np.allclose(tokens, np_tokens, rtol=1e-5, atol=1e-5))
    nrow["detail"] = f"contextual tokens max |JAX - NumPy| {diff:.2g}"
    return nrow


def focal_inputs(v: FocalShape, batch: int, seed: int) -> jax.Array:
    """Random attention made on the device (no host copy), float32 [B, H, N, N]: a softmax of
    Gaussian logits over [CLS] + N tokens with the [CLS] row and column dropped."""

    @jax.jit
    def make(key):
        logits = 3.0 * jax.random.normal(key, (batch, v.heads, v.n + 1, v.n + 1))
        return jax.nn.softmax(logits, axis=-1)[:, :, 1:, 1:]

    return make(jax.random.key(seed))


def focal_cell(
    v: FocalShape, batch: int, timing: Timing, seed: int, copts: Any = None
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """``jax.jit(jax.vmap(focal_select))`` over ``batch`` examples, timed as ``run_cell``:
    ``(row, picks [B, k], example 0's attention as NumPy)``."""
    attn = focal_inputs(v, batch, seed)
    fn = jax.jit(jax.vmap(lambda a: T.focal_select(a, v.k)))
    cell, picks = time_jitted(fn, (attn,), v.n, batch, timing, copts)
    example = {"attn": np.asarray(attn[0])}
    del attn
    gc.collect()
    return cell, picks, example


def _parse_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@dataclasses.dataclass
class Config:
    quick: bool = False
    shapes: list[str] | None = None
    batches: list[int] | None = None
    selectors: list[str] | None = None
    out: Path = DEFAULT_OUT
    json_out: Path | None = None
    timing: Timing = dataclasses.field(default_factory=Timing)
    numpy: bool = True
    numpy_threads: int | None = 1  # BLAS threads of the NumPy baselines (None: NumPy's default)
    seed: int = 0
    # XLA options for every compilation; --quick turns the backend optimiser off (compile time)
    compiler_options: dict[str, Any] | None = None


def run(config: Config) -> dict[str, Any]:
    """Runs the benchmark and returns every number (what the JSON holds)."""
    t_start = time.perf_counter()
    table = QUICK_SHAPES if config.quick else SHAPES
    vtable = QUICK_VISION_SHAPES if config.quick else VISION_SHAPES
    vdtable = QUICK_VISIONDROP_SHAPES if config.quick else VISIONDROP_SHAPES
    ftable = QUICK_FOCAL_SHAPES if config.quick else FOCAL_SHAPES
    all_shapes = {**SHAPES, **QUICK_SHAPES}
    all_vision = {**VISION_SHAPES, **QUICK_VISION_SHAPES}
    all_vd = {**VISIONDROP_SHAPES, **QUICK_VISIONDROP_SHAPES}
    all_focal = {**FOCAL_SHAPES, **QUICK_FOCAL_SHAPES}
    shape_names = config.shapes or [*table, *vtable, *vdtable, *ftable]
    everything = {**all_shapes, **all_vision, **all_vd, **all_focal}
    unknown = [n for n in shape_names if n not in everything]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {sorted(everything)}")
    shapes = [all_shapes[n] for n in shape_names if n in all_shapes]
    known = selectors()  # read now: a method registered after import is benchmarked too
    apart = (FLOWCUT, VISIONDROP, FOCAL)  # timed on their own shapes, not through the registry
    sel_names = config.selectors or [*known, *apart]
    unknown = [n for n in sel_names if n not in known and n not in apart]
    if unknown:
        raise ValueError(f"unknown selectors {unknown}; known: {sorted([*known, *apart])}")
    chosen = [known[n] for n in sel_names if n not in apart]
    # FlowCut runs on the vision shapes (and only there), VisionDrop on the VisionDrop shapes
    vshapes = [all_vision[n] for n in shape_names if n in all_vision and FLOWCUT in sel_names]
    vdshapes = [all_vd[n] for n in shape_names if n in all_vd and VISIONDROP in sel_names]
    fshapes = [all_focal[n] for n in shape_names if n in all_focal and FOCAL in sel_names]
    oracles = load_oracles() if config.numpy else None

    machine = lab.machine()
    load_start = machine["loadavg"]
    print(f"[selection] {machine['processor']}, {machine['cpu_count']} cores, jax {machine['jax']}")
    print("[selection] measuring machine limits ...", flush=True)
    copts = config.compiler_options
    apart_phases = [ph for v in vshapes for ph in _cost_flowcut(v)]
    apart_phases += [ph for v in vdshapes for ph in _cost_visiondrop(v)]
    apart_phases += [ph for v in fshapes for ph in _cost_focal(v)]
    vd_matmuls = {
        _matmul_key(v, kind): dims
        for v in vdshapes
        for kind, dims in _visiondrop_products(v).items()
    }
    limits = measure_limits(shapes, machine, config.quick, copts, chosen, apart_phases, vd_matmuls)

    rows: list[dict[str, Any]] = []
    for s in shapes:
        batches = config.batches or list(s.batches)
        data = make_inputs(s, max(batches), config.seed)
        example = {k: v[0] for k, v in data.items()}
        example["rng"] = np.random.default_rng(config.seed)
        for sel in chosen:
            jax_picks = None
            for b in sorted(batches):
                label = f"{sel.name} {s.name} B={b}"
                print(f"[selection] {label} ...", end=" ", flush=True)
                cell, picks = run_cell(sel, s, b, data, config.timing, config.seed, copts)
                if jax_picks is None:
                    jax_picks = picks[0]
                lim = limit_for(sel, s, b, machine, limits)
                lim_all = limit_for(sel, s, b, machine, limits, allcore=True)
                row = {
                    "selector": sel.name,
                    "shape": s.name,
                    "n": s.n,
                    "d": s.d,
                    "k": s.k,
                    "batch": b,
                    "greedy": sel.greedy,
                    "needs_nn": sel.needs_nn,
                    "note": sel.note,
                    **cell,
                    **lim,
                    "achieved_over_limit": cell["per_image_s"] / lim["limit_s"],
                    "limit_allcore_s": lim_all["limit_s"],
                    "achieved_over_limit_allcore": cell["per_image_s"] / lim_all["limit_s"],
                }
                rows.append(row)
                print(
                    f"{_fmt_s(cell['per_image_s'])}/img ({cell['reps']} reps), "
                    f"limit {_fmt_s(lim['limit_s'])}",
                    flush=True,
                )
            if config.numpy:
                print(f"[selection] {sel.name} {s.name} NumPy ...", end=" ", flush=True)
                got = run_numpy(sel, s, example, oracles, config.timing, config.numpy_threads)
                if got is None:
                    print("no NumPy reference", flush=True)
                    continue
                nrow, np_picks = got
                if sel.name != "random" and jax_picks is not None:
                    common = np.intersect1d(np.asarray(np_picks), jax_picks).size
                    nrow["agree"] = common / s.k
                    nrow["numpy_picks"] = int(np.asarray(np_picks).size)
                print(f"{_fmt_s(nrow['per_image_s'])}/img", flush=True)
                for row in rows:
                    if (row["selector"], row["shape"]) == (sel.name, s.name):
                        row["numpy"] = nrow
                        row["numpy_over_jax"] = nrow["per_image_s"] / row["per_image_s"]
            gc.collect()
        del data, example
        gc.collect()
    for v in vshapes:
        for b in sorted(config.batches or v.batches):
            print(f"[selection] {FLOWCUT} {v.name} B={b} ...", end=" ", flush=True)
            cell, _ = flowcut_cell(v, b, config.timing, config.seed, copts)
            rows.append(flowcut_row(v, b, cell, machine, limits))
            print(f"{_fmt_s(cell['per_image_s'])}/img ({cell['reps']} reps)", flush=True)
    for v in vdshapes:
        first = None  # (output, example 0) of the smallest batch: the NumPy comparison's
        vrows = []
        for b in sorted(config.batches or v.batches):
            print(f"[selection] {VISIONDROP} {v.name} B={b} ...", end=" ", flush=True)
            cell, out, example = visiondrop_cell(v, b, config.timing, config.seed, copts)
            first = first or (out, example)
            vrows.append(visiondrop_row(v, b, cell, machine, limits))
            print(
                f"{_fmt_s(cell['per_image_s'])}/img ({cell['reps']} reps), "
                f"limit {_fmt_s(vrows[-1]['limit_s'])}",
                flush=True,
            )
        if config.numpy and first is not None:
            print(f"[selection] {VISIONDROP} {v.name} NumPy ...", end=" ", flush=True)
            nrow = visiondrop_numpy(v, *first, oracles, config.timing, config.numpy_threads)
            if nrow is None:
                print("no NumPy reference", flush=True)
            else:
                print(f"{_fmt_s(nrow['per_image_s'])}/img, {nrow['detail']}", flush=True)
                for row in vrows:
                    row["numpy"] = nrow
                    row["numpy_over_jax"] = nrow["per_image_s"] / row["per_image_s"]
        rows += vrows
        del first
        gc.collect()
    for v in fshapes:
        rows += focal_rows(v, config, machine, limits, oracles, copts)

    result = {
        "command": "python -m benchmarks.selection " + " ".join(config_argv(config)),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "loadavg_start": load_start,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "limits": limits,
        "shapes": [dataclasses.asdict(s) for s in shapes],
        "vision_shapes": [dataclasses.asdict(v) for v in vshapes],
        "visiondrop_shapes": [
            {**dataclasses.asdict(v), "patches": v.patches, "remaining": v.remaining}
            for v in vdshapes
        ],
        "focal_shapes": [dataclasses.asdict(v) for v in fshapes],
        "selectors": {
            s.name: {"greedy": s.greedy, "needs_nn": s.needs_nn, "note": s.note}
            for s in [
                *chosen,
                *([FLOWCUT_SELECTOR] if vshapes else []),
                *([VISIONDROP_SELECTOR] if vdshapes else []),
                *([FOCAL_SELECTOR] if fshapes else []),
            ]
        },
        "timing": dataclasses.asdict(config.timing),
        "compiler_options": copts,
        "numpy_threads": config.numpy_threads,
        "rows": rows,
        "scaling": scaling(rows, shapes)
        + scaling(rows, vshapes)
        + scaling(rows, vdshapes)
        + scaling(rows, fshapes),
    }
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _apart_row(
    sel: Selector,
    v: Any,
    batch: int,
    fields: dict[str, Any],
    cell: dict[str, Any],
    machine: dict,
    limits: dict,
) -> dict[str, Any]:
    """A row of a selector timed apart (FlowCut, VisionDrop): the timing ``cell`` and its
    limit, keyed as the other rows, with the shape's own ``fields`` after the batch."""
    lim = limit_for(sel, v, batch, machine, limits)
    lim_all = limit_for(sel, v, batch, machine, limits, allcore=True)
    return {
        "selector": sel.name, "shape": v.name, "n": v.n, "d": v.d, "k": v.k, "batch": batch,
        **fields, "greedy": False, "needs_nn": False, "note": sel.note, **cell, **lim,
        "achieved_over_limit": cell["per_image_s"] / lim["limit_s"],
        "limit_allcore_s": lim_all["limit_s"],
        "achieved_over_limit_allcore": cell["per_image_s"] / lim_all["limit_s"],
    }  # fmt: skip


def flowcut_row(
    v: VisionShape, batch: int, cell: dict[str, Any], machine: dict, limits: dict
) -> dict[str, Any]:
    """A FlowCut result row: the timing ``cell`` and its limit, keyed as the other rows."""
    fields = {"layers": v.layers, "heads": v.heads}
    return _apart_row(FLOWCUT_SELECTOR, v, batch, fields, cell, machine, limits)


def visiondrop_row(
    v: VisionDropShape, batch: int, cell: dict[str, Any], machine: dict, limits: dict
) -> dict[str, Any]:
    """A VisionDrop result row (``d`` = hidden width D; ``dh`` = the metric's width)."""
    fields = {"dh": v.dh, "patches": v.patches, "contextual": v.contextual}
    return _apart_row(VISIONDROP_SELECTOR, v, batch, fields, cell, machine, limits)


def focal_rows(
    v: FocalShape, config: Config, machine: dict, limits: dict, oracles: Any, copts: Any
) -> list[dict[str, Any]]:
    """FoPru's rows at every batch of ``v``, each with the NumPy reference (example 0 of the
    smallest batch: ``np_focal_select``) and the fraction of its picks JAX's share."""
    rows, first = [], None
    for b in sorted(config.batches or v.batches):
        print(f"[selection] {FOCAL} {v.name} B={b} ...", end=" ", flush=True)
        cell, picks, example = focal_cell(v, b, config.timing, config.seed, copts)
        first = first or (picks[0], example)
        rows.append(_apart_row(FOCAL_SELECTOR, v, b, {"heads": v.heads}, cell, machine, limits))
        print(
            f"{_fmt_s(cell['per_image_s'])}/img ({cell['reps']} reps), "
            f"limit {_fmt_s(rows[-1]['limit_s'])}",
            flush=True,
        )
    if config.numpy and first is not None:
        print(f"[selection] {FOCAL} {v.name} NumPy ...", end=" ", flush=True)
        got = run_numpy(FOCAL_SELECTOR, v, first[1], oracles, config.timing, config.numpy_threads)
        if got is None:
            print("no NumPy reference", flush=True)
            return rows
        nrow, np_picks = got
        nrow["agree"] = np.intersect1d(np.asarray(np_picks), first[0]).size / v.k
        nrow["numpy_picks"] = int(np.asarray(np_picks).size)
        print(f"{_fmt_s(nrow['per_image_s'])}/img, agree {nrow['agree']:.3f}", flush=True)
        for row in rows:
            row["numpy"] = nrow
            row["numpy_over_jax"] = nrow["per_image_s"] / row["per_image_s"]
    return rows


def config_argv(config: Config) -> list[str]:
    argv = []
    if config.quick:
        argv.append("--quick")
    if config.shapes:
        argv += ["--shapes", ",".join(config.shapes)]
    if config.batches:
        argv += ["--batches", ",".join(map(str, config.batches))]
    if config.selectors:
        argv += ["--selectors", ",".join(config.selectors)]
    if not config.numpy:
        argv.append("--no-numpy")
    if config.numpy_threads != 1:
        argv += ["--numpy-threads", str(config.numpy_threads or 0)]
    return argv


# ---------------------------------------------------------------------------------------------
# Scaling and report
# ---------------------------------------------------------------------------------------------


def scaling(rows: list[dict[str, Any]], shapes: Sequence[Shape]) -> list[dict[str, Any]]:
    """How per-image cost grows: batch (largest vs 1) per shape, and between pairs of shapes."""
    by = {(r["selector"], r["shape"], r["batch"]): r for r in rows}
    out = []
    for sel in dict.fromkeys(r["selector"] for r in rows):
        for s in shapes:
            bs = sorted(b for (n, sh, b) in by if n == sel and sh == s.name)
            if len(bs) >= 2 and bs[0] == 1:
                lo, hi = by[(sel, s.name, 1)], by[(sel, s.name, bs[-1])]
                out.append(
                    {
                        "selector": sel,
                        "what": f"batch 1 -> {bs[-1]} ({s.name})",
                        "measured": hi["per_image_s"] / lo["per_image_s"],
                        "model": hi["limit_s"] / lo["limit_s"],
                        "exponent": None,
                    }
                )
        for a in shapes:
            for b in shapes:
                if a is b:
                    continue
                diff = [f for f in ("n", "d", "k") if getattr(a, f) != getattr(b, f)]
                if not diff or len(diff) > 2 or any(getattr(b, f) < getattr(a, f) for f in diff):
                    continue
                if (sel, a.name, 1) not in by or (sel, b.name, 1) not in by:
                    continue
                ra, rb = by[(sel, a.name, 1)], by[(sel, b.name, 1)]
                factor = {f: getattr(b, f) / getattr(a, f) for f in diff}
                what = ", ".join(f"{f.upper()} x{factor[f]:g}" for f in diff)
                measured = rb["per_image_s"] / ra["per_image_s"]
                grow = math.log(next(iter(factor.values())))
                out.append(
                    {
                        "selector": sel,
                        "what": f"{what} ({a.name} -> {b.name}, B=1)",
                        "measured": measured,
                        "model": rb["limit_s"] / ra["limit_s"],
                        "exponent": (
                            math.log(measured) / grow if len(set(factor.values())) == 1 else None
                        ),
                    }
                )
    return out


def _fmt_s(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.3g} us"
    if t < 1.0:
        return f"{t * 1e3:.3g} ms"
    return f"{t:.3g} s"


def _fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _fmt_bytes(b: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def _shape_table(srows: list[dict[str, Any]]) -> list[str]:
    batches = sorted({r["batch"] for r in srows})
    b0, b1 = batches[0], batches[-1]
    header = ["selector", *(f"B={b}" for b in batches)]
    if b1 != b0:
        header.append(f"B={b1}/B={b0}")
    header += ["NumPy", f"NumPy/JAX (B={b0})", f"limit (B={b1})", "binds", f"JAX/limit B={b0}"]
    if b1 != b0:
        header.append(f"JAX/limit B={b1}")
    header.append("NxN in HLO")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for sel in dict.fromkeys(r["selector"] for r in srows):
        by_b = {r["batch"]: r for r in srows if r["selector"] == sel}
        first, last = by_b[min(by_b)], by_b[max(by_b)]
        npr = first.get("numpy")
        nn = last["nn_in_hlo"]
        nn_txt = ("yes" if nn else "no") + (
            " (needed)" if last["needs_nn"] else (" (NOT NEEDED)" if nn else "")
        )
        cells = [sel + (" *" if last["greedy"] else "")]
        cells += [_fmt_s(by_b[b]["per_image_s"]) if b in by_b else "-" for b in batches]
        if b1 != b0:
            cells.append(_fmt_x(last["per_image_s"] / first["per_image_s"]))
        cells += [
            _fmt_s(npr["per_image_s"]) if npr else "-",
            _fmt_x(first.get("numpy_over_jax")),
            _fmt_s(last["limit_s"]),
            last["binds"],
            _fmt_x(first["achieved_over_limit"]),
        ]
        if b1 != b0:
            cells.append(_fmt_x(last["achieved_over_limit"]))
        cells.append(nn_txt)
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", "`*` greedy selector."]


def report(result: dict[str, Any]) -> str:
    m, lim = result["machine"], result["limits"]
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('num_threads')} threads" for b in m["numpy_blas"]
    )
    lines = [
        "# pruneax.tokens selection benchmark",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['wall_s']:.0f} s wall).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['processor']}, {m['cpu_count']} cores; L2 "
        f"{_fmt_bytes(m['l2_bytes_per_core'])} per core, L3 {_fmt_bytes(m['l3_bytes'])} shared",
        f"- JAX {m['jax']} (jaxlib {m['jaxlib']}, backend {m['backend']}), NumPy {m['numpy']} "
        f"(BLAS: {blas or 'unknown'}; the NumPy baselines ran with "
        f"{result['numpy_threads'] or 'default'} BLAS thread(s))",
        f"- Load average at start / end: {result['loadavg_start']} / {result['loadavg_end']} "
        "(other work on the machine makes timings noisy)",
        f"- Dispatch floor (trivial jitted call): {_fmt_s(lim['dispatch_s'])}",
        "- Greedy step floor (XLA while loop, body = masked argmax + min-update over N; "
        "not in the limits): "
        + ", ".join(f"{key}: {_fmt_s(v)} per step" for key, v in lim["loop_step_s"].items()),
        "",
        "Matmul rate (float32 GFLOP/s, best of a few; XLA jitted, NumPy's BLAS with 1 and with its "
        "default threads; the model uses the best, and never less than the square's best):",
        "",
        "| product | XLA | NumPy 1 thread | NumPy default threads | used |",
        "|---|---|---|---|---|",
    ]
    peak = max(v["best"] for k, v in lim["matmul_gflops"].items() if k.startswith("square"))
    lines += [
        f"| {k} | {v['xla']:.1f} | {v['numpy_1']:.1f} | {v['numpy_all']:.1f} | "
        f"{max(v['best'], peak):.1f} |"
        for k, v in lim["matmul_gflops"].items()
    ]
    lines += [
        "",
        "Read bandwidth by cache level (GB/s; one jitted stream re-reading the working set: "
        "a repeated sum and a repeated gemv, the better one is used; all cores: one NumPy gemv "
        "thread per core, for reference only):",
        "",
        "| level | working set | sum | gemv | used | all cores |",
        "|---|---|---|---|---|---|",
    ]
    for level, bw in lim["bandwidth"].items():
        lines.append(
            f"| {level} | {_fmt_bytes(bw['bytes'])} | {_fmt_x(bw['sum'])} | "
            f"{_fmt_x(bw['gemv'])} | {_fmt_x(bw['best'])} | {_fmt_x(bw.get('allcore_numpy'))} |"
        )
    if lim.get("bandwidth_at"):
        lines += [
            "",
            "Read bandwidth at each phase's own working set beyond L2 (repeated gemv). The model "
            "uses, for a working set, the best probe at that size or larger (bandwidth cannot "
            "grow with the working set; the probes are noisy), so a working set just above a "
            "cache size, which still partly hits it, is not charged the DRAM rate:",
            "",
            "| working set | GB/s |",
            "|---|---|",
        ]
        lines += [f"| {_fmt_bytes(int(b))} | {v:.1f} |" for b, v in lim["bandwidth_at"].items()]
    rows = result["rows"]
    for shape in result["shapes"]:
        srows = [r for r in rows if r["shape"] == shape["name"]]
        if not srows:
            continue
        lines += [
            "",
            f"## {shape['name']}: N={shape['n']}, D={shape['d']}, k={shape['k']}, "
            f"grid {shape['grid'][0]}x{shape['grid'][1]} ({shape['note']})",
            "",
            "Time per image (median batch time / B). NumPy: one example, BLAS threads as above; "
            "NumPy/JAX > 1 means JAX is faster. Limit: per image at the largest batch "
            "(dispatch / B + phases). Target for greedy selectors: JAX/limit <= 1.5 and no "
            "per-image slowdown with batch.",
            "",
            *_shape_table(srows),
        ]
    for v in result.get("vision_shapes", []):
        srows = [r for r in rows if r["shape"] == v["name"]]
        if not srows:
            continue
        lines += [
            "",
            f"## {v['name']}: FlowCut in the vision encoder, S={v['layers']} scoring blocks, "
            f"H={v['heads']}, T={v['n'] + 1}, dh={v['dh']}, k={v['k']} ({v['note']})",
            "",
            "`flowcut_select` alone (jitted, vmapped) on recorded per-block [CLS] attention rows "
            "[S, H, T] and value states [S, H, T, dh] (what the ViT keeps under "
            "`PruningPlan.flowcut`; the blocks themselves are not timed). Limit: those inputs "
            "read once at the bandwidth of their per-example size, plus a rank of the N patches "
            "in every other block, plus dispatch / B. No NumPy reference.",
            "",
            *_shape_table(srows),
        ]
    for v in result.get("visiondrop_shapes", []):
        srows = [r for r in rows if r["shape"] == v["name"]]
        if not srows:
            continue
        lines += [
            "",
            f"## {v['name']}: VisionDrop / VisionZip vision stage, N={v['n']}, D={v['d']}, "
            f"dh={v['dh']}, k={v['k']} = CLS + {v['patches']} dominant patches + "
            f"{v['contextual']} contextual ({v['note']})",
            "",
            "`topk` of the dominant patches on the head-summed [CLS] attention row (here a "
            "softmax of Gaussian logits [N]), then `contextual_merge` of the other "
            f"R={v['remaining']} patches' hidden states [N, D] with the block's head-averaged "
            "keys [N, dh] as the metric (jitted, vmapped; the encoder blocks are not timed). "
            "Limit: the N scores ranked, the cosine similarity matmul (R - c) x dh x c (metric "
            "rows read once) and the one-hot assignment matmul c x (R - c) x D (the R remaining "
            "hidden rows read once), plus dispatch / B. NumPy: the published forward for one "
            "example (`tests/oracles.py:np_visionzip`).",
            "",
            *_shape_table(srows),
        ]
    for v in result.get("focal_shapes", []):
        srows = [r for r in rows if r["shape"] == v["name"]]
        if not srows:
            continue
        lines += [
            "",
            f"## {v['name']}: FoPru (rank) in the vision encoder, H={v['heads']}, N={v['n']}, "
            f"k={v['k']} ({v['note']})",
            "",
            "`focal_select` (jitted, vmapped) on one block's patch-to-patch attention "
            "[H, N, N] (a softmax of Gaussian logits over [CLS] + N tokens, the [CLS] row and "
            "column dropped; the encoder block is not timed). Limit: the attention read once at "
            "the bandwidth of its per-example size (the received and sent sums in one pass), "
            "then the variances and the rank of N significances, plus dispatch / B. NumPy: the "
            "published `focal_prunning`, rank strategy, for one example "
            "(`tests/oracles.py:np_focal_select`).",
            "",
            *_shape_table(srows),
        ]
    lines += [
        "",
        "## How cost grows",
        "",
        "Ratio of per-image time (measured) next to the ratio of the model's limits (model); "
        "exponent = log(measured ratio) / log(size ratio) when one size changes.",
        "",
        "| selector | change | measured | model | exponent |",
        "|---|---|---|---|---|",
    ]
    for sc in result["scaling"]:
        exp = "-" if sc["exponent"] is None else f"{sc['exponent']:.2f}"
        lines.append(
            f"| {sc['selector']} | {sc['what']} | {sc['measured']:.3g} | {sc['model']:.3g} | "
            f"{exp} |"
        )
    sources: dict[str, tuple[str, float | None]] = {}
    token_diff: dict[str, float] = {}
    for r in rows:
        if r.get("numpy"):
            agree = r["numpy"].get("agree")
            _, before = sources.get(r["selector"], ("", None))
            if before is not None and agree is not None:
                agree = min(agree, before)
            sources[r["selector"]] = (r["numpy"]["source"], agree)
            diff = r["numpy"].get("tokens_max_abs_diff")  # VisionDrop: its merged tokens
            if diff is not None:
                token_diff[r["selector"]] = max(diff, token_diff.get(r["selector"], 0.0))
    lines += [
        "",
        "## Notes",
        "",
        "- Inputs: Gaussian features [B, N, D] float32, uniform scores in [0, 1); coverage uses "
        f"x_vision = x, alpha={ALPHA}, tau_tv={TAU_TV}, tau_vv={TAU_VV}; HiPrune alpha 0.1; "
        f"FEATHER stride {FEATHER_STRIDE}; HoloV {HOLOV_CHUNKS} chunks. Greedy loops run a fixed "
        "k steps, so their cost does not depend on the values. VisionDrop: scores = softmax of "
        "3 x Gaussian logits over N, Gaussian hidden states and metric, made on the device.",
        "- Cost model phases (per image): DivPrune = Gram matmul 2N^2D + one N^2 pass + k row "
        "reads; k-center / max-sum = row norms + k matrix-vector products (k N D 4 bytes "
        "re-read); coverage = similarity matmuls 2(m+n)nD + k passes over C ((m+n) n 4 bytes); "
        "HoloV = 16 chunk Grams; top-k, random, HiPrune, FEATHER = a few passes over N "
        "scores (dispatch-bound); VisionDrop = a rank of N scores + cosine similarity matmul "
        "2(R-c)c dh + one-hot assignment matmul 2c(R-c)D (R remaining hidden rows read once). "
        "A phase costs max(FLOPs / matmul rate, bytes / read bandwidth "
        "at its per-example working set); the matmul rate is the better of the square and the "
        "phase's own product. The level named in 'binds' is where one example's working set "
        "fits; the JSON also gives where the whole batch's working set fits "
        "(`level_batch_vmap`: what a plain vmap of a greedy loop streams each step) and a "
        "limit with all-core bandwidth (`limit_allcore_s`).",
        "- Repeats: adaptive to about the target time per cell, at least "
        f"{result['timing']['min_reps']}; a cell whose run takes over "
        f"{result['timing']['slow_s']:g} s gets {result['timing']['slow_reps']} runs, or one "
        f"when two would take over {result['timing']['max_cell_s']:g} s (see `reps`). NumPy: "
        "one run when it takes over 5 s, two over 1 s. Timings are medians; the machine limits "
        "are best-of (they bound what the machine can do).",
        "- NumPy baselines (source; overlap of its picks with pruneax's on example 0, the "
        "lowest over the shapes):",
    ]
    for name, (src, agree) in sources.items():
        line = f"  - {name}: {src}" + ("" if agree is None else f", overlap {agree:.2f}")
        if name in token_diff:
            line += f"; contextual tokens max |JAX - NumPy| {token_diff[name]:.2g}"
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, batch 1 and 2 (< 20 s)")
    every_shape = {**SHAPES, **QUICK_SHAPES, **VISION_SHAPES, **QUICK_VISION_SHAPES}
    every_shape |= {**VISIONDROP_SHAPES, **QUICK_VISIONDROP_SHAPES}
    every_shape |= {**FOCAL_SHAPES, **QUICK_FOCAL_SHAPES}
    p.add_argument("--shapes", help=f"comma list of {sorted(every_shape)}")
    p.add_argument("--batches", help="comma list of batch sizes (overrides every shape's)")
    p.add_argument("--selectors", help=f"comma list of {[*SELECTORS, FLOWCUT, VISIONDROP, FOCAL]}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report path")
    p.add_argument("--json", type=Path, default=None, help="JSON path (default: --out as .json)")
    p.add_argument("--target-s", type=float, default=None, help="timed seconds per cell")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--max-reps", type=int, default=None)
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy baselines")
    p.add_argument(
        "--numpy-threads",
        type=int,
        default=1,
        help="BLAS threads for the NumPy baselines (default 1; 0 = NumPy's default)",
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    timing = Timing(target_s=0.05, min_reps=2, max_reps=5) if a.quick else Timing()
    timing = dataclasses.replace(
        timing,
        **{
            k: v
            for k, v in (
                ("target_s", a.target_s),
                ("min_reps", a.min_reps),
                ("max_reps", a.max_reps),
            )
            if v is not None
        },
    )
    batches = _parse_list(a.batches)
    return Config(
        quick=a.quick,
        shapes=_parse_list(a.shapes),
        batches=[int(b) for b in batches] if batches else None,
        selectors=_parse_list(a.selectors),
        out=a.out,
        json_out=a.json,
        timing=timing,
        numpy=not a.no_numpy,
        numpy_threads=a.numpy_threads or None,
        seed=a.seed,
        compiler_options=QUICK_COMPILER_OPTIONS if a.quick else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    result = run(config)
    text = report(result)
    print(text)
    out = lab.write_text(config.out, text)
    json_out = Path(config.json_out) if config.json_out else out.with_suffix(".json")
    lab.write_text(json_out, json.dumps(result, indent=1, default=_json_default))
    print(f"[selection] wrote {out} and {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
