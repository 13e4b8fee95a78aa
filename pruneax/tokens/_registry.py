"""One registry of token selectors: what each method needs and how to call it.

Every consumer (ViT pruning plans, the VLM's pre-LLM selection, benchmarks, property tests,
experiments) reads ``METHODS`` instead of keeping its own table of names. A consumer computes the
inputs a method ``needs`` -- token features, per-token scores (CLS attention, or attention
received when there is no CLS token), the attention each token receives at a shallow and at a
deep layer (HiPrune), the patch grid, text embeddings, a PRNG key -- and calls
``select_tokens``. Adding a selector is one function, one ``register`` call
and one oracle test; it then appears in every consumer.

The model is jaxpruner's ``ALGORITHM_REGISTRY`` / ``register_algorithm`` without its class
hierarchy: an entry is a frozen record holding a plain function.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pruneax.tokens import _checks
from pruneax.tokens._coverage import coverage
from pruneax.tokens._diversity import kcenter, maxmin_diversity, maxsum_diversity
from pruneax.tokens._feather import _grid_size, feather, uniform_grid
from pruneax.tokens._hiprune import hiprune
from pruneax.tokens._holov import holov
from pruneax.tokens._topk import random, topk

# Inputs a selector may need, per example (``grid`` and ``key`` are shared by the batch rows
# only in the sense that the consumer passes one per row; ``grid`` is static).
INPUTS = (
    "scores",
    "features",
    "shallow_scores",
    "deep_scores",
    "grid",
    "text",
    "vision_features",
    "key",
)


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered token selector.

    Attributes:
      name: the registry name.
      fn: ``fn(k, inputs, **options) -> int32 [k]`` for ONE example, where ``inputs`` is a dict
        holding (at least) the inputs named in ``needs``; unique, sorted indices.
      needs: inputs that must be given (a subset of ``INPUTS``).
      optional: inputs used when given (e.g. ``text`` for MMTok coverage).
      options: option name -> default value (e.g. ``{"alpha": 0.1}``).
      summary: one line: what it keeps and from which paper.
    """

    name: str
    fn: Callable[..., jax.Array]
    needs: frozenset[str]
    optional: frozenset[str] = frozenset()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    summary: str = ""

    def __post_init__(self):
        unknown = (set(self.needs) | set(self.optional)) - set(INPUTS)
        if unknown:
            raise ValueError(
                f"Method({self.name!r}): needs / optional must be among {INPUTS}; got "
                f"{sorted(unknown)}"
            )
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "optional", frozenset(self.optional))
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))


_METHODS: dict[str, Method] = {}
METHODS: Mapping[str, Method] = types.MappingProxyType(_METHODS)


def register(method: Method, *, replace: bool = False) -> Method:
    """Adds a selector to ``METHODS`` (every consumer then offers it).

    Args:
      method: the ``Method`` record.
      replace: allow replacing an entry of the same name.

    Returns:
      ``method``.

    Raises:
      ValueError: if ``method`` is not a ``Method``, its name is the reserved ``"none"``, or
        its name is taken and ``replace`` is false.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> lowest = T.Method("lowest", lambda k, inp: T.topk(-inp["scores"], k), {"scores"})
      >>> _ = T.register(lowest)
      >>> T.select_tokens("lowest", 2, scores=jnp.array([3.0, 1.0, 2.0])).tolist()
      [1, 2]
      >>> T.unregister("lowest")
    """
    if not isinstance(method, Method):
        raise ValueError(f"register: method must be a Method; got {type(method).__name__}")
    if method.name == "none":
        raise ValueError('register: "none" is reserved (consumers use it for keeping every token)')
    if method.name in _METHODS and not replace:
        raise ValueError(f"register: a method named {method.name!r} exists; pass replace=True")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Removes ``name`` from ``METHODS``.

    Args:
      name: a registered method.

    Returns:
      None.

    Raises:
      ValueError: if no method has that name.

    Example:
      >>> import pruneax.tokens as T
      >>> _ = T.register(T.Method("lowest", lambda k, inp: T.topk(-inp["scores"], k), {"scores"}))
      >>> T.unregister("lowest")
      >>> "lowest" in T.METHODS
      False
    """
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(
            f"unregister: no method named {name!r} (name must be a registered method); have "
            f"{sorted(_METHODS)}"
        )
    del _METHODS[name]


def get_method(name: str) -> Method:
    """The registered ``Method`` called ``name``.

    Args:
      name: a registered method.

    Returns:
      Its ``Method`` record.

    Raises:
      ValueError: naming the known methods, if ``name`` is not registered.

    Example:
      >>> import pruneax.tokens as T
      >>> m = T.get_method("topk")
      >>> m.name, sorted(m.needs)
      ('topk', ['scores'])
    """
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}; got name={name!r}")
    return _METHODS[name]


def select_tokens(name: str, k: int, **inputs: Any) -> jax.Array:
    """Runs the registered selector ``name`` on ONE example.

    Args:
      name: a key of ``METHODS``.
      k: tokens to keep, a Python int.
      **inputs: the method's inputs (``scores`` [N], ``features`` [N, D], ``shallow_scores``
        / ``deep_scores`` [N] (attention received at a shallow / the deep layer), ``grid``
        (rows, cols), ``text`` [M, D], ``vision_features`` [N, Dv], ``key``)
        and options (see ``METHODS[name].options``). Inputs the method does not use are
        ignored, so a consumer may pass everything it has; ``None`` counts as absent.

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: for an unknown method, a missing input, an unknown option, or whatever the
        selector itself rejects.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> T.select_tokens("topk", 2, scores=jnp.array([0.1, 0.5, 0.3])).tolist()
      [1, 2]
    """
    method = get_method(name)
    given = {n: v for n, v in inputs.items() if n in INPUTS and v is not None}
    options = {n: v for n, v in inputs.items() if n not in INPUTS}
    missing = sorted(method.needs - set(given))
    if missing:
        raise ValueError(f"select_tokens({name!r}): missing inputs {missing}")
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        raise ValueError(
            f"select_tokens({name!r}): unknown options {unknown}; it takes {sorted(method.options)}"
        )
    used = {n: v for n, v in given.items() if n in method.needs | method.optional}
    return method.fn(k, used, **{**method.options, **options})


def uniform(k: int, *, grid: tuple[int, int]) -> np.ndarray:
    """``k`` patch indices spread over the grid without scores.

    FEATHER's uniform sample (every ``s``-th row and column from (0, 0), ``uniform_grid``) at
    the largest stride ``s`` that still holds ``k`` tokens, thinned to exactly ``k`` by taking
    evenly spaced entries (``round(linspace(0, m - 1, k))``) of that grid when it holds
    ``m > k``.

    Args:
      k: tokens to keep, an int in [1, rows * cols].
      grid: the patch grid ``(rows, cols)``.

    Returns:
      int32 [k], ascending, unique (a static NumPy array).

    Raises:
      ValueError: if ``k`` is outside [1, rows * cols].

    Example:
      >>> import pruneax.tokens as T
      >>> T.uniform(4, grid=(4, 4)).tolist()
      [0, 3, 12, 15]
    """
    rows, cols = _checks.grid_shape(grid, _grid_size(grid))
    n = rows * cols
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"uniform: k must be an int in [1, {n}]; got {k!r}")
    s = max(s for s in range(1, max(rows, cols) + 1) if len(uniform_grid(grid, s)) >= k)
    base = uniform_grid(grid, s)
    take = np.round(np.linspace(0, len(base) - 1, k)).astype(np.int64)
    return base[take].astype(np.int32)


def _coverage(k, inp, *, alpha, tau_tv, tau_vv):
    return coverage(
        inp["features"],
        k,
        text=inp.get("text"),
        x_vision=inp.get("vision_features"),
        alpha=alpha,
        tau_tv=tau_tv,
        tau_vv=tau_vv,
    )


def _holov(k, inp, *, num_chunks):
    n = inp["scores"].shape[-1]
    return holov(inp["scores"], inp["features"], k, num_chunks=max(1, min(num_chunks, n // 2)))


for _m in (
    Method(
        "topk",
        lambda k, inp: topk(inp["scores"], k),
        {"scores"},
        summary="top-k by CLS attention (FasterVLM; EViT and FastV select this way)",
    ),
    Method(
        "random",
        lambda k, inp: random(inp["key"], inp["features"].shape[0], k),
        {"key", "features"},
        summary="uniformly random, without replacement",
    ),
    Method(
        "uniform",
        lambda k, inp: jax.numpy.asarray(uniform(k, grid=inp["grid"])),
        {"grid"},
        summary="evenly spread over the patch grid, no scores (FEATHER's uniform sample)",
    ),
    Method(
        "divprune",
        lambda k, inp: maxmin_diversity(inp["features"], k),
        {"features"},
        summary="max-min diversity of the features (DivPrune)",
    ),
    Method(
        "kcenter",
        lambda k, inp, metric: kcenter(inp["features"], k, pivot=inp["scores"], metric=metric),
        {"features", "scores"},
        options={"metric": "cosine"},
        summary="k-center, pivot = highest score (ToDRE v1)",
    ),
    Method(
        "maxsum",
        lambda k, inp: maxsum_diversity(inp["features"], k, pivot=inp["scores"]),
        {"features", "scores"},
        summary="max-sum diversity, pivot = highest score (ToDRE v2)",
    ),
    Method(
        "coverage",
        _coverage,
        {"features"},
        optional={"text", "vision_features"},
        options={"alpha": 0.5, "tau_tv": 0.01, "tau_vv": 0.2},
        summary="coverage of the text and the vision tokens (MMTok); vision-only without text",
    ),
    Method(
        "hiprune",
        lambda k, inp, alpha: hiprune(
            inp["shallow_scores"], inp["deep_scores"], k, grid=inp["grid"], alpha=alpha
        ),
        {"shallow_scores", "deep_scores", "grid"},
        options={"alpha": 0.1},
        summary="anchors from a shallow layer, buffers, registers from the deep one (HiPrune)",
    ),
    Method(
        "feather",
        lambda k, inp, stride: feather(inp["scores"], k, grid=inp["grid"], stride=stride),
        {"scores", "grid"},
        options={"stride": 3},
        summary="uniform grid + top-k by score (FEATHER)",
    ),
    Method(
        "holov",
        _holov,
        {"scores", "features"},
        options={"num_chunks": 16},
        summary="holistic chunk budgets by score (HoloV); chunks capped at half the tokens",
    ),
):
    register(_m)
del _m
