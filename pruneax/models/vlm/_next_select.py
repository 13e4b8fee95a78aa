"""Pre-LLM visual-token selection on LLaVA-NeXT's packed (anyres) visual tokens.

The packed tokens of one image are ``[base tile g x g] [unpadded grid rows x cols, a newline
after each row]`` (``AnyresLayout``). Selection runs on two static groups, each a real raster
grid, so every ``pruneax.tokens`` method (grid-based ones included) applies unchanged:

* the base tile's ``g x g`` patches (grid ``(g, g)``), and
* the unpadded spatial grid's ``rows x cols`` patches (grid ``(rows, cols)``), drawn from the
  high-resolution tiles.

Inputs of each candidate token: ``scores`` = the [CLS] attention of ITS tile at the feature
layer's block (the tile's CLS query row, head-averaged, over that tile's patches: FasterVLM's
score applied tile by tile; the attention each patch receives when the tower has no CLS);
``deep_scores`` / ``shallow_scores`` = the attention the patch receives within its tile;
``features`` = its projector output; ``vision_features`` = its vision feature; ``text`` = the
question's LLM embeddings; ``grid`` = the group's grid. Scores of different tiles are each
softmax rows of one tile, so they are compared across tiles as they are (not renormalised).

Budget: ``VisualSelect.keep`` counts visual (non-newline) tokens. A ratio applies to each group
(``round(ratio * n_group)``); an int ``k`` is split in proportion to the group sizes (base gets
``round(k * g^2 / m)``, at least 1, the grid the rest). ``image_newline`` tokens are ALWAYS kept
(one per unpadded row): they carry no image content but mark the 2-D layout the LLM was trained
on, and FasterVLM's published LLaVA-NeXT code (``llava_arch.py``: the index mask of every
newline is set to True) keeps them too. Kept tokens stay in packed order.

References: Zhang et al., FasterVLM, 2024 (arXiv:2412.01818), code
``github.com/Theia-4869/FasterVLM`` ``llava/model/llava_arch.py`` (which budgets per tile
instead); transformers' ``LlavaNextModel.pack_image_features``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax import tokens as T
from pruneax.models.vlm._anyres import AnyresLayout
from pruneax.models.vlm._select import VisualSelect


def group_budgets(select: VisualSelect, sizes: tuple[int, int]) -> tuple[int, int]:
    """Visual tokens kept in the (base, grid) groups of ``sizes`` tokens.

    Args:
      select: the ``VisualSelect``.
      sizes: ``(g * g, rows * cols)``.

    Returns:
      ``(k_base, k_grid)``.

    Raises:
      ValueError: if an int budget does not fit the ``sum(sizes)`` visual tokens, or for an
        in-vision method (``"flowcut"``).
    """
    nb, ng = sizes
    if select.in_vision:
        raise ValueError(
            f"LlavaNext: select.method {select.method!r} prunes inside the vision encoder; "
            "LlavaNext (anyres tiles) does not support it (VLM does)"
        )
    if select.registry_name is None:
        return nb, ng
    if isinstance(select.keep, float):
        return T.budget(nb, select.keep), (T.budget(ng, select.keep) if ng else 0)
    k, m = select.keep, nb + ng
    if not 1 <= k <= m or (ng and k < 2):
        raise ValueError(
            f"LlavaNext: select.keep={k} must be in [{2 if ng else 1}, {m}] (the image's "
            f"{m} visual tokens, base and grid groups)"
        )
    if not ng:
        return k, 0
    kb = min(nb, max(1, round(k * nb / m)))
    kb = max(kb, k - ng)
    return kb, k - kb


def select_image(
    layout: AnyresLayout,
    select: VisualSelect,
    inputs: dict[str, jax.Array],
    key: jax.Array | None,
) -> np.ndarray | jax.Array:
    """Packed-token positions kept for one image (newlines included), ascending.

    Args:
      layout: the image's ``AnyresLayout``.
      select: the ``VisualSelect`` (a registry method, not ``"none"``).
      inputs: per-patch inputs over the image's ``num_tiles * g * g`` patches (tile-major):
        any of ``scores``, ``deep_scores``, ``shallow_scores`` [n], ``features`` [n, D],
        ``vision_features`` [n, Dv]; and ``text`` [M, D] (not per patch).
      key: a PRNG key, or None.

    Returns:
      int32 [k_base + k_grid + rows] positions into the packed tokens.
    """
    src = layout.pack_index()
    g2 = layout.base
    rows, cols = layout.grid
    body = np.arange(g2, src.size)
    newline_pos = body[src[body] < 0]
    grid_pos = body[src[body] >= 0]
    groups = [(np.arange(g2), (layout.side, layout.side)), (grid_pos, (rows, cols))]
    budgets = group_budgets(select, (g2, grid_pos.size))
    name = select.registry_name
    options: dict[str, Any] = select.method_options()
    keys = [None, None] if key is None else list(jax.random.split(key, 2))
    kept = [jnp.asarray(newline_pos, jnp.int32)]
    for (pos, grid), k, gkey in zip(groups, budgets, keys, strict=True):
        if k == 0:
            continue
        if k == pos.size:
            kept.append(jnp.asarray(pos, jnp.int32))
            continue
        s = src[pos]
        row = {n: v[s] for n, v in inputs.items() if n != "text"}
        if "text" in inputs:
            row["text"] = inputs["text"]
        idx = T.select_tokens(name, k, **row, grid=grid, key=gkey, **options)
        kept.append(jnp.asarray(pos, jnp.int32)[idx.astype(jnp.int32)])
    return jnp.sort(jnp.concatenate(kept))


def num_selected(layout: AnyresLayout, select: VisualSelect) -> int:
    """Packed tokens an image keeps under ``select``: ``k_base + k_grid + rows``.

    Raises:
      ValueError: as ``group_budgets``.
    """
    rows, cols = layout.grid
    kb, kg = group_budgets(select, (layout.base, rows * cols))
    return kb + kg + rows
