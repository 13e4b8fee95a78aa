"""Pre-LLM visual-token selection of the VLM: ``VisualSelect`` names a method of the token
registry (``pruneax.tokens.METHODS``) and its budget and options.

Every method registered in ``pruneax.tokens`` is a pre-LLM method of the VLM, with no edit here:
the VLM computes the inputs the method ``needs`` (see ``VLM.select_visual``) and runs
``pruneax.tokens.select_tokens`` per example under ``jax.vmap``. ``"none"`` keeps every token;
``VLM_SELECT_ALIASES`` holds the VLM's historical names (``"fastervlm"`` = ``"topk"``).
``VISION_SELECT_METHODS`` (``"flowcut"``) select inside the vision encoder instead, from
several blocks, as a ViT ``PruningPlan`` (``_flowcut.py``); they are not registry methods.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax import tokens as T
from pruneax.models._shared.fields import is_int, is_real
from pruneax.models.vit._flowcut import BATCH_COUNTS

# The VLM's own names for registry methods (FasterVLM = top-k by [CLS] attention).
VLM_SELECT_ALIASES: Mapping[str, str] = types.MappingProxyType({"fastervlm": "topk"})

# VisualSelect's named option fields, per registry method: option -> field. They predate the
# ``options`` field and keep their (LLaVA) defaults for these methods only.
_OPTION_FIELDS: dict[str, dict[str, str]] = {
    "hiprune": {"alpha": "hiprune_alpha"},
    "holov": {"num_chunks": "num_chunks"},
    "coverage": {"alpha": "coverage_alpha", "tau_tv": "tau_tv", "tau_vv": "tau_vv"},
}


class _SelectMethods(Mapping):
    """Pre-LLM methods of the VLM, read live from the token registry (``VLM_SELECT_METHODS``).

    Maps each accepted ``VisualSelect.method`` to the ``pruneax.tokens.METHODS`` entry it runs:
    ``"none"`` -> None, each alias of ``VLM_SELECT_ALIASES`` -> its registry name, and every
    registered method -> itself (a method registered later appears at once).

    Example:
      >>> from pruneax.models.vlm import VLM_SELECT_METHODS
      >>> VLM_SELECT_METHODS["fastervlm"], VLM_SELECT_METHODS["divprune"]
      ('topk', 'divprune')
    """

    def _table(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {"none": None}
        out.update((a, m) for a, m in VLM_SELECT_ALIASES.items() if m in T.METHODS)
        out.update((m, m) for m in T.METHODS if m != "none")
        return out

    def __getitem__(self, name: str) -> str | None:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"VLM_SELECT_METHODS({self._table()!r})"


VLM_SELECT_METHODS: Mapping[str, str | None] = _SelectMethods()
# Pre-LLM methods that select inside the vision encoder, with their options: FlowCut (a ViT
# ``PruningPlan.flowcut``, ``select_layer`` = the feature layer's block); VisionDrop's vision
# stage = VisionZip's (dominant by the feature block's CLS attention + contextual merging);
# FoPru (the feature block's patch-to-patch attention, ``pruneax.tokens.focal_select``).
VISION_SELECT_METHODS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {"flowcut": ("batch_count",), "visiondrop": ("contextual",), "fopru": ("strategy",)}
)


@dataclasses.dataclass(frozen=True)
class VisualSelect:
    """A pre-LLM visual-token selection (frozen, hashable: static under jit).

    Attributes:
      method: a key of ``VLM_SELECT_METHODS``: ``"none"`` (keep all), any method registered
        in ``pruneax.tokens.METHODS`` (``"topk"`` by the [CLS] attention of the feature layer,
        ``"divprune"``, ``"kcenter"``, ``"maxsum"``, ``"coverage"``, ``"hiprune"``,
        ``"feather"``, ``"holov"``, ``"random"`` (needs a key), ``"uniform"``, or a user's
        own) or an alias (``"fastervlm"`` = ``"topk"``). ``VLM.select_visual`` says which
        input is which. Or a key of ``VISION_SELECT_METHODS``: ``"flowcut"`` prunes inside
        the vision encoder (``PruningPlan.flowcut``; option ``batch_count``), and
        ``"visiondrop"`` (VisionDrop's / VisionZip's vision stage: ``keep`` = dominant +
        contextual tokens, option ``contextual``, default ``keep // 8``; the CLS token is
        one of the dominant ones when the VLM projects patches only), and ``"fopru"``
        (FoPru; option ``strategy``: ``"rank"`` or ``"row"``), ``VLM`` only.
      keep: visual tokens kept: an int count, or a ratio in (0, 1] of the N visual tokens
        (``pruneax.tokens.budget``: Python ``round(ratio * N)``).
      hiprune_alpha: HiPrune's anchor-and-buffer fraction (0.1); ``"hiprune"`` only.
      shallow_layer: the vision block (0-based) whose received attention is
        ``shallow_scores`` (HiPrune's "object" layer); None means ``round(L_run * 9 / 24) -
        1`` for the ``L_run`` blocks that run (layer 9 of 24, 1-based, for CLIP-L), >= 0.
      num_chunks: HoloV's raster chunks (16), capped at N // 2; ``"holov"`` only.
      coverage_alpha, tau_tv, tau_vv: MMTok's weights and temperatures (LLaVA: 0.5, 0.02,
        0.2); ``"coverage"`` only.
      coverage_text: methods that take ``text`` (MMTok's coverage) get the question's LLM
        input embeddings (True); False withholds them (vision-only coverage).
      keep_positions: RoPE positions of the prompt after selection. False (default, what the
        published pre-LLM methods do: they drop tokens from ``inputs_embeds``): the LLM
        numbers the shortened prompt contiguously. True: the kept visual tokens keep their
        original positions ``P + i`` and the question stays at ``P + N + j`` (an ablation
        that separates which tokens are kept from the renumbering).
      options: more registry options of the method, a mapping (stored as sorted ``(name,
        value)`` pairs, values hashable), e.g. ``{"stride": 2}`` for ``"feather"`` or
        ``{"metric": "l2"}`` for ``"kcenter"``; they override the named fields above and
        the registry's defaults.

    Raises:
      ValueError: for an unknown method, a bad ``keep``, out-of-range options, or an option
        the method does not take.

    Example:
      >>> from pruneax.models.vlm import VisualSelect
      >>> VisualSelect("fastervlm", keep=0.25).method_options()
      {}
      >>> VisualSelect("feather", keep=8, options={"stride": 2}).method_options()
      {'stride': 2}
      >>> VisualSelect("coverage", keep=8).method_options()
      {'alpha': 0.5, 'tau_tv': 0.02, 'tau_vv': 0.2}
    """

    method: str = "none"
    keep: int | float = 1.0
    hiprune_alpha: float = 0.1
    shallow_layer: int | None = None
    num_chunks: int = 16
    coverage_alpha: float = 0.5
    tau_tv: float = 0.02
    tau_vv: float = 0.2
    coverage_text: bool = True
    keep_positions: bool = False
    options: Any = ()

    def __post_init__(self):
        known = [*VLM_SELECT_METHODS, *VISION_SELECT_METHODS]
        if not isinstance(self.method, str) or self.method not in known:
            raise ValueError(f"VisualSelect: method must be one of {known}; got {self.method!r}")
        keep = self.keep
        if is_int(keep):
            if keep < 1:
                raise ValueError(f"VisualSelect: keep as a count must be >= 1; got {keep}")
            object.__setattr__(self, "keep", int(keep))
        elif is_real(keep):
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"VisualSelect: keep as a ratio must be in (0, 1]; got {keep}")
            object.__setattr__(self, "keep", float(keep))
        else:
            raise ValueError(f"VisualSelect: keep must be an int or a float; got {keep!r}")
        if self.method == "none" and (isinstance(self.keep, int) or self.keep != 1.0):
            raise ValueError(f"VisualSelect: method='none' keeps every token; got keep={keep!r}")
        self._check_fields()
        object.__setattr__(self, "options", self._check_options(self.options))

    def _check_fields(self) -> None:
        if not is_real(self.hiprune_alpha) or not 0.0 <= self.hiprune_alpha <= 1.0:
            raise ValueError(
                f"VisualSelect: hiprune_alpha must be in [0, 1]; got {self.hiprune_alpha!r}"
            )
        if self.shallow_layer is not None and (
            not is_int(self.shallow_layer) or self.shallow_layer < 0
        ):
            raise ValueError(
                f"VisualSelect: shallow_layer must be an int >= 0 or None; got "
                f"{self.shallow_layer!r}"
            )
        if not is_int(self.num_chunks) or self.num_chunks < 1:
            raise ValueError(
                f"VisualSelect: num_chunks must be an int >= 1; got {self.num_chunks!r}"
            )
        if not is_real(self.coverage_alpha) or self.coverage_alpha < 0:
            raise ValueError(
                f"VisualSelect: coverage_alpha must be a float >= 0; got {self.coverage_alpha!r}"
            )
        for name in ("tau_tv", "tau_vv"):
            value = getattr(self, name)
            if not is_real(value) or not value > 0:
                raise ValueError(f"VisualSelect: {name} must be a float > 0; got {value!r}")
        for name in ("keep_positions", "coverage_text"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"VisualSelect: {name} must be a bool; got {value!r}")

    def _check_options(self, options: Any) -> tuple[tuple[str, Any], ...]:
        if isinstance(options, Mapping):
            items = list(options.items())
        else:
            try:
                items = [(name, value) for name, value in options]
            except (TypeError, ValueError):
                raise ValueError(
                    f"VisualSelect: options must be a mapping of option name -> value; got "
                    f"{options!r}"
                ) from None
        if any(not isinstance(name, str) for name, _ in items):
            raise ValueError(f"VisualSelect: option names must be strings; got {options!r}")
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"VisualSelect: options repeat a name; got {names}")
        name = self.registry_name
        takes = () if name is None else tuple(T.get_method(name).options)
        takes = VISION_SELECT_METHODS.get(self.method, takes)
        unknown = sorted(set(names) - set(takes))
        if unknown:
            raise ValueError(
                f"VisualSelect: method {self.method!r} takes no options {unknown}; it takes "
                f"{sorted(takes)}"
            )
        for name, value in items:
            try:
                hash(value)
            except TypeError:
                raise ValueError(
                    f"VisualSelect: option {name!r} must be hashable (VisualSelect is static "
                    f"under jit); got {value!r}"
                ) from None
        batch_count = dict(items).get("batch_count", BATCH_COUNTS[0])
        if self.method == "flowcut" and batch_count not in BATCH_COUNTS:
            raise ValueError(
                f"VisualSelect: option 'batch_count' must be one of {BATCH_COUNTS}; got "
                f"{batch_count!r}"
            )
        return tuple(sorted(items))

    @property
    def registry_name(self) -> str | None:
        """The ``pruneax.tokens.METHODS`` entry this selection runs (None for ``"none"`` and
        the ``VISION_SELECT_METHODS``)."""
        return None if self.in_vision else VLM_SELECT_METHODS[self.method]

    @property
    def in_vision(self) -> bool:
        """True for a method that selects inside the vision encoder (``"flowcut"``,
        ``"visiondrop"``, ``"fopru"``)."""
        return self.method in VISION_SELECT_METHODS

    def method_options(self) -> dict[str, Any]:
        """The options passed to the registry method: named fields, then ``options``.

        Returns:
          option name -> value (the registry's defaults fill the rest).
        """
        if self.registry_name is None:
            return dict(self.options)
        fields = _OPTION_FIELDS.get(self.registry_name, {})
        out = {o: getattr(self, f) for o, f in fields.items()}
        out.update(self.options)
        return out

    def num_kept(self, n: int) -> int:
        """Visual tokens kept out of ``n``.

        Args:
          n: the visual tokens per image.

        Returns:
          ``k`` in [1, n] (``n`` for ``"none"``).

        Raises:
          ValueError: if the budget is outside [1, n].
        """
        if self.method == "none":
            return n
        if isinstance(self.keep, int):
            if self.keep > n:
                raise ValueError(
                    f"VisualSelect: keep={self.keep} exceeds the {n} visual tokens; expected "
                    f"1 <= keep <= {n}"
                )
            return self.keep
        return T.budget(n, self.keep)


NO_SELECT = VisualSelect()


def uniform_visual_indices(grid: tuple[int, int], k: int) -> np.ndarray:
    """``k`` patch indices spread over the grid without scores: ``pruneax.tokens.uniform``.

    Kept for existing callers; the ``"uniform"`` method of the registry runs the same function.

    Args:
      grid: the patch grid ``(rows, cols)``.
      k: tokens to keep, an int in [1, rows * cols].

    Returns:
      int32 [k], ascending, unique (a static NumPy array).

    Raises:
      ValueError: if ``k`` is outside [1, rows * cols].

    Example:
      >>> from pruneax.models.vlm import uniform_visual_indices
      >>> uniform_visual_indices((4, 4), 4).tolist()
      [0, 3, 12, 15]
    """
    return T.uniform(k, grid=grid)


def _ids(ids: Any, name: str, b: int) -> jax.Array | None:
    if ids is None:
        return None
    x = jnp.asarray(ids)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer) or x.shape[0] != b:
        raise ValueError(
            f"VLM: {name} must be integer [B, L] with B = {b} (the images' batch); got shape "
            f"{tuple(x.shape)} dtype {x.dtype}"
        )
    return None if x.shape[1] == 0 else x
