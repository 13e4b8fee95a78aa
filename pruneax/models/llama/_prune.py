"""The in-LLM token pruning protocol of ``LlamaLM``: ``PruneSpec``, ``PruneContext``, ``PruneStep``.

A pruning spec is passed as ``prune=`` to ``LlamaLM.__call__``, ``init_cache``,
``generate_greedy`` and ``VLM.__call__``. It must be hashable (it is a static argument under
``jax.jit``: a frozen dataclass is the natural shape) and implement the five methods of
``PruneSpec``; nothing else is required, so a class defined outside pruneax works unchanged.
The built-in specs are ``FastVSpec``, ``FeatherSpec``, ``TodreSpec``, ``VisionDropSpec`` and
``TransPruneSpec``.

How ``LlamaLM`` drives a spec, for a call of T tokens through L layers:

1. ``check_prune`` (at the start of the call, and in ``init_cache`` with T = ``max_len``):
   ``validate(L, T, where)``, then ``pruning_layers(L)``, ``attention_layers(L)`` and
   ``tokens_per_layer(L, T)`` are checked for shape (see ``PruneSpec``).
2. Every layer in ``attention_layers(L)`` computes explicit attention probabilities, or only
   the part the spec reads when it has the OPTIONAL method ``attention_form(layer, L)``:
   ``"probs"`` (the default: [B, H, T, S]), ``"last_query"`` (the last query's row [B, H, 1,
   S]; FastV) or ``("key_mass", start, stop)`` (each query's probability mass on the keys of
   the call's tokens ``[start, stop)``, [B, H, T, 1]; ToDRE). The reduced forms are computed
   from q and k in float32 while the layer's output uses the fused attention, so no [T, S]
   probability matrix is materialised.
   Every layer in the OPTIONAL ``transition_layers(L)`` (absent: none) also measures, per
   token, ``(||b||, ||a||, cos(b, a))`` of its attention and its MLP sub-block (b = the
   sub-block's normalised input, a = its output before the residual add; float32 [B, T_l, 6],
   see ``TransitionStats``); ``LlamaLM`` keeps them for the rest of the call and hands them to
   every later ``apply`` (``PruneContext.transitions``). Other specs pay nothing.
3. At the INPUT of every layer i in ``pruning_layers(L)``, ``apply(i, L, ctx)`` receives a
   ``PruneContext`` and returns a ``PruneStep``: the tokens listed in ``keep`` go on (with
   their ORIGINAL RoPE positions), those flagged in ``hide`` stay in the sequence but leave
   the keys (and the cache validity) of layer i and every later layer.
4. Layer i processes (and appends to its KV cache) ``tokens_per_layer(L, T)[i]`` tokens; the
   ``info`` arrays of every step are merged into ``LlamaOutput.prune_info``.

Example (keep the first ``n`` image tokens at layer ``layer``; see tests/test_llm_protocol.py):

  >>> import dataclasses, jax.numpy as jnp
  >>> @dataclasses.dataclass(frozen=True)
  ... class FirstImageTokens:
  ...     start: int
  ...     stop: int
  ...     n: int
  ...     layer: int = 1
  ...     def validate(self, num_layers, length, where):
  ...         if not self.layer < num_layers or self.stop > length:
  ...             raise ValueError(f"{where}: the spec does not fit")
  ...     def pruning_layers(self, num_layers):
  ...         return (self.layer,)
  ...     def attention_layers(self, num_layers):
  ...         return frozenset()
  ...     def tokens_per_layer(self, num_layers, length):
  ...         late = length - (self.stop - self.start) + self.n
  ...         return tuple(length if i < self.layer else late for i in range(num_layers))
  ...     def apply(self, layer, num_layers, ctx):
  ...         b, t = ctx.valid.shape
  ...         idx = jnp.r_[0 : self.start + self.n, self.stop : t]
  ...         return PruneStep(jnp.broadcast_to(idx, (b, idx.size)).astype(jnp.int32), None, {})
  >>> isinstance(FirstImageTokens(2, 10, 3), PruneSpec)
  True
  >>> check_prune(FirstImageTokens(2, 10, 3), 4, 12, "doc")
"""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from pruneax.models._shared.fields import is_int
from pruneax.models.llama._scores import prune_form


class TransitionStats(NamedTuple):
    """The per-token measurements of one layer in a spec's ``transition_layers``.

    Attributes:
      stats: [B, T_l, 6] float32 over the T_l tokens the layer processed: ``||b||``, ``||a||``,
        ``cos(b, a)`` of the attention sub-block (b = ``input_layernorm`` output, a = the
        attention output before the residual add), then the same of the MLP sub-block (b =
        ``post_attention_layernorm`` output, a = the MLP output).
      valid: [B, T_l] bool: the token was valid (real, not hidden) at that layer.
      index: [B, T_i] int32: where each token of the CURRENT sequence (at the pruning layer
        the context is built for) sat among the T_l; ``LlamaLM`` gathers it with every later
        ``PruneStep.keep``, so the measured arrays stay whole (a spec can normalise over the
        tokens of that layer, then gather: TransPrune).

    Example:
      >>> st = TransitionStats(jnp.arange(18.0).reshape(1, 3, 6), None, jnp.array([[0, 2]]))
      >>> st.current()[..., 0].tolist()
      [[0.0, 12.0]]
    """

    stats: jax.Array
    valid: jax.Array
    index: jax.Array

    def current(self) -> jax.Array:
        """``stats`` gathered to the current tokens: [B, T_i, 6]."""
        return jnp.take_along_axis(self.stats, self.index[..., None], axis=1)


class PruneContext(NamedTuple):
    """What ``LlamaLM`` hands ``PruneSpec.apply`` at the input of pruning layer i.

    Attributes:
      x: [B, T_i, D] hidden states entering layer i (after the earlier pruning steps).
      valid: [B, T_i] bool: the token is real (not padding) and not hidden by an earlier step.
      attn: [B, H, T_{i-1}, S] float32 attention probabilities of layer i - 1 when i - 1 is in
        ``attention_layers`` (S = T_{i-1} without a cache, layer i - 1's cache size with one),
        else None; in the spec's ``attention_form`` when it has one (``"last_query"``: [B, H,
        1, S]; ``("key_mass", start, stop)``: [B, H, T_{i-1}, 1]).
      offset: the cache slot of the call's first token in layer i - 1 (where its queries sit
        among ``attn``'s keys): an int32 scalar with a cache, 0 without one or at layer 0.
      block: layer i's ``LlamaBlock`` (``input_layernorm``, ``self_attn.project_qk``), for
        criteria computed from the layer's own projections (FEATHER, VisionDrop).
      positions: [B, T_i] int32 RoPE positions layer i gives the tokens (for criteria that
        apply RoPE to the layer's own queries / keys: VisionDrop).
      transitions: {layer: ``TransitionStats``} of the spec's ``transition_layers`` before
        layer i in this call (an empty dict for a spec without them; None when the caller
        supplies none).
    """

    x: jax.Array
    valid: jax.Array
    attn: jax.Array | None
    offset: Any
    block: Any
    positions: jax.Array | None = None
    transitions: dict[int, TransitionStats] | None = None


class PruneStep(NamedTuple):
    """What ``PruneSpec.apply`` returns for one pruning layer.

    Attributes:
      keep: int32 [B, T_i'] indices into the layer's current T_i tokens of those that go on
        (gathered with their original RoPE positions), with T_i' = ``tokens_per_layer(...)[i]``;
        ascending, unless the step also gives ``positions`` (then in the new sequence order);
        or None to keep all T_i.
      hide: bool [B, T_i'] tokens masked out of the keys (and the cache validity) of this layer
        and every later one, indexed AFTER ``keep``; or None.
      info: arrays to report in ``LlamaOutput.prune_info`` (keys should not collide across
        layers).
      x: [B, T_i', D] hidden states that REPLACE the gathered ones (a spec that merges
        tokens: VisionDrop's contextual tokens), indexed after ``keep``; or None.
      positions: [B, T_i'] int32 RoPE positions that replace the gathered original ones (a
        spec that renumbers the shortened sequence: VisionDrop), indexed after ``keep``; or
        None. Later calls with a cache continue each layer's own numbering (see ``LlamaLM``).
    """

    keep: jax.Array | None
    hide: jax.Array | None
    info: dict[str, jax.Array]
    x: jax.Array | None = None
    positions: jax.Array | None = None


@runtime_checkable
class PruneSpec(Protocol):
    """An in-LLM token pruning spec: any hashable object with these five methods.

    ``LlamaLM`` calls them in this order (see the module docstring): ``validate``, then the
    three static queries, then ``apply`` inside the traced forward pass. Only ``apply`` sees
    arrays; the other four must be pure Python functions of their (static) arguments, so that
    shapes are known at trace time. ``VLM`` additionally reads ``start`` / ``stop`` (the image
    span among the call's tokens) and checks it against the visual tokens.

    Example:
      >>> from pruneax.models.llama import FastVSpec
      >>> isinstance(FastVSpec(start=2, stop=10), PruneSpec), isinstance("fastv", PruneSpec)
      (True, False)
    """

    def validate(self, num_layers: int, length: int, where: str) -> None:
        """Raises ``ValueError`` (message prefixed with ``where``, e.g. ``"LlamaLM"``) unless
        the spec fits a model of ``num_layers`` layers and a call (or a cache) of ``length``
        tokens. Called first, before any other method, by ``LlamaLM`` and ``init_cache``."""
        ...

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        """Strictly increasing layer indices in ``[0, num_layers)``: ``apply`` runs at the
        input of each of them."""
        ...

    def attention_layers(self, num_layers: int) -> Collection[int]:
        """Layers whose attention probabilities ``apply`` reads (``PruneContext.attn`` of
        pruning layer i is layer i - 1's); those layers run the explicit attention. (A spec
        may also define the OPTIONAL ``attention_form(layer, num_layers)`` and
        ``transition_layers(num_layers)``: see the module docstring.)"""
        ...

    def tokens_per_layer(self, num_layers: int, length: int) -> tuple[int, ...]:
        """Tokens each of the ``num_layers`` layers processes (and appends to its KV cache) in
        a call of ``length`` tokens: ``num_layers`` ints in ``[1, length]``, non-increasing,
        changing only at ``pruning_layers``. ``init_cache`` sizes every layer's cache with it."""
        ...

    def apply(self, layer: int, num_layers: int, ctx: PruneContext) -> PruneStep:
        """The pruning step at the input of ``layer`` (one of ``pruning_layers``): from the
        ``PruneContext``, a ``PruneStep`` whose ``keep`` has ``tokens_per_layer(...)[layer]``
        entries per row (traced; must not depend on array values for its shapes)."""
        ...


PRUNE_METHODS = ("validate", "pruning_layers", "attention_layers", "tokens_per_layer", "apply")


def _layer_ints(value: Any, num_layers: int) -> bool:
    try:
        items = list(value)
    except TypeError:
        return False
    return all(is_int(i) and 0 <= i < num_layers for i in items)


def check_prune(prune: Any, num_layers: int, length: int, where: str) -> None:
    """Raises unless ``prune`` implements ``PruneSpec`` and fits the model and the call.

    Args:
      prune: the spec.
      num_layers: the model's layers.
      length: the call's tokens (or the cache's ``max_len``).
      where: prefix of the error messages (``"LlamaLM"``, ``"init_cache"``).

    Raises:
      ValueError: naming the missing methods when ``prune`` is not a ``PruneSpec``; for an
        unhashable spec; whatever ``prune.validate`` raises; for ``pruning_layers``,
        ``attention_layers``, ``tokens_per_layer``, ``attention_form`` or
        ``transition_layers`` of the wrong form.

    Example:
      >>> from pruneax.models.llama import FastVSpec
      >>> check_prune(FastVSpec(start=2, stop=10), 4, 12, "doc")
      >>> check_prune(object(), 4, 12, "doc")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: doc: prune must be a FastVSpec, FeatherSpec, TodreSpec or None, or ...
    """
    missing = [m for m in PRUNE_METHODS if not callable(getattr(prune, m, None))]
    if missing:
        raise ValueError(
            f"{where}: prune must be a FastVSpec, FeatherSpec, TodreSpec or None, or an object "
            f"implementing the PruneSpec protocol; got {type(prune).__name__}, which lacks "
            f"{', '.join(missing)}"
        )
    try:
        hash(prune)
    except TypeError:
        raise ValueError(
            f"{where}: prune must be hashable (a static jit argument: e.g. a frozen "
            f"dataclass); got an unhashable {type(prune).__name__}"
        ) from None
    prune.validate(num_layers, length, where)
    name = type(prune).__name__
    events = prune.pruning_layers(num_layers)
    if not _layer_ints(events, num_layers) or list(events) != sorted(set(events)):
        raise ValueError(
            f"{where}: {name}.pruning_layers({num_layers}) must be strictly increasing ints in "
            f"[0, {num_layers}); got {events!r}"
        )
    attention = prune.attention_layers(num_layers)
    if not _layer_ints(attention, num_layers):
        raise ValueError(
            f"{where}: {name}.attention_layers({num_layers}) must be ints in [0, "
            f"{num_layers}); got {attention!r}"
        )
    for i in attention:
        prune_form(prune, int(i), num_layers, where)
    transition_layers(prune, num_layers, where)
    tokens = prune.tokens_per_layer(num_layers, length)
    ok = (
        isinstance(tokens, tuple | list)
        and len(tokens) == num_layers
        and all(isinstance(n, numbers.Integral) and 1 <= n <= length for n in tokens)
    )
    if ok:
        before = (length, *tokens[:-1])
        ok = all(
            n == p or (n < p and i in events)
            for i, (n, p) in enumerate(zip(tokens, before, strict=True))
        )
    if not ok:
        raise ValueError(
            f"{where}: {name}.tokens_per_layer({num_layers}, {length}) must be {num_layers} "
            f"ints in [1, {length}], non-increasing, changing only at pruning_layers "
            f"{tuple(events)}; got {tokens!r}"
        )


def transition_layers(prune: Any, num_layers: int, where: str) -> frozenset[int]:
    """The checked layers of ``prune``'s OPTIONAL ``transition_layers`` (empty without it).

    Raises:
      ValueError: unless they are ints in ``[0, num_layers)``.
    """
    method = getattr(prune, "transition_layers", None)
    if method is None:
        return frozenset()
    layers = method(num_layers)
    if not _layer_ints(layers, num_layers):
        raise ValueError(
            f"{where}: {type(prune).__name__}.transition_layers({num_layers}) must be ints in "
            f"[0, {num_layers}); got {layers!r}"
        )
    return frozenset(int(i) for i in layers)


def check_step(step: Any, prune: Any, layer: int, b: int, t: int, t_next: int) -> PruneStep:
    """Checks the ``PruneStep`` that ``prune.apply`` returned at ``layer`` for ``b`` rows of
    ``t`` tokens, of which ``t_next`` (``tokens_per_layer``) must go on; static shapes only.

    Raises:
      ValueError: naming the spec and the layer for a wrong type or shape.
    """
    name = f"{type(prune).__name__}.apply at layer {layer}"
    if not isinstance(step, PruneStep):
        raise ValueError(f"LlamaLM: {name} must return a PruneStep; got {type(step).__name__}")
    keep, hide = step.keep, step.hide
    if keep is None and t_next != t:
        raise ValueError(f"LlamaLM: {name} kept all {t} tokens; tokens_per_layer says {t_next}")
    if keep is not None and (
        jnp.shape(keep) != (b, t_next) or not jnp.issubdtype(jnp.result_type(keep), jnp.integer)
    ):
        raise ValueError(
            f"LlamaLM: {name} must return keep int [B, T'] = {(b, t_next)} (tokens_per_layer); "
            f"got shape {jnp.shape(keep)} dtype {jnp.result_type(keep)}"
        )
    if hide is not None and (jnp.shape(hide) != (b, t_next) or jnp.result_type(hide) != jnp.bool_):
        raise ValueError(
            f"LlamaLM: {name} must return hide bool [B, T'] = {(b, t_next)} or None; got shape "
            f"{jnp.shape(hide)} dtype {jnp.result_type(hide)}"
        )
    if not isinstance(step.info, dict):
        raise ValueError(f"LlamaLM: {name} must return info as a dict; got {step.info!r}")
    x = step.x
    if x is not None and (jnp.ndim(x) != 3 or jnp.shape(x)[:2] != (b, t_next)):
        raise ValueError(
            f"LlamaLM: {name} must return x [B, T', D] with (B, T') = {(b, t_next)} or None; got "
            f"shape {jnp.shape(x)}"
        )
    pos = step.positions
    if pos is not None and (
        jnp.shape(pos) != (b, t_next) or not jnp.issubdtype(jnp.result_type(pos), jnp.integer)
    ):
        raise ValueError(
            f"LlamaLM: {name} must return positions int [B, T'] = {(b, t_next)} or None; got "
            f"shape {jnp.shape(pos)} dtype {jnp.result_type(pos)}"
        )
    return step
