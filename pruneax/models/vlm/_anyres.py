"""LLaVA-NeXT's "anyres" geometry in pure Python / NumPy: the best tiling resolution, the tile
grid, the unpadding of the tile-feature grid and the resulting visual-token layout.

An image of size (h, w) is resized (keeping its aspect) and padded to the resolution of
``image_grid_pinpoints`` that keeps most of its pixels (``select_best_resolution``), cut into
``tiles = (H* / S, W* / S)`` square tiles of the vision encoder's size S, and a downscaled copy
of the whole image (the "base" tile) goes first. Each tile gives a g x g grid of patch features
(g = S / patch). LLaVA-NeXT's "spatial_unpad" packing lays the grid tiles out spatially into a
``(tiles_h * g) x (tiles_w * g)`` feature grid, removes the rows (or columns) that only cover
the padding, and appends the ``image_newline`` embedding after every remaining row. The packed
sequence of one image is ``[g * g base features] [row 0, newline] [row 1, newline] ...``.

Transcribed (not copied) from transformers v5: ``image_processing_utils.select_best_resolution``,
``models/llava_next/modeling_llava_next.py`` (``get_anyres_image_grid_shape``,
``image_size_to_num_patches``, ``unpad_image``, ``LlavaNextModel.pack_image_features``) and
``models/llava_next/processing_llava_next.py`` (``_get_number_of_features``).

References: Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge", 2024
(https://llava-vl.github.io/blog/2024-01-30-llava-next/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pruneax.models._shared.fields import is_int


def _size(value: Any, name: str, where: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in np.asarray(value).tolist())
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a pair (height, width); got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{where}: {name} must be positive (height, width); got {value!r}")
    return h, w


def check_pinpoints(pinpoints: Any, tile_size: int | None = None, where: str = "anyres") -> tuple:
    """``pinpoints`` as a tuple of ``(height, width)`` int pairs, validated.

    Args:
      pinpoints: a non-empty sequence of ``(height, width)`` resolutions.
      tile_size: if given, every side must be a positive multiple of it.
      where: the caller's name, for messages.

    Returns:
      ``((h0, w0), (h1, w1), ...)``.

    Raises:
      ValueError: for an empty or malformed list, or sides that are not multiples of
        ``tile_size``.

    Example:
      >>> check_pinpoints([[24, 48], [48, 24]], 24)
      ((24, 48), (48, 24))
    """
    if isinstance(pinpoints, str) or not isinstance(pinpoints, Sequence) or not pinpoints:
        raise ValueError(
            f"{where}: image_grid_pinpoints must be a non-empty list of (height, width); got "
            f"{pinpoints!r}"
        )
    out = tuple(_size(p, "image_grid_pinpoints entry", where) for p in pinpoints)
    if tile_size is not None and any(h % tile_size or w % tile_size for h, w in out):
        raise ValueError(
            f"{where}: every image_grid_pinpoints side must be a multiple of the vision "
            f"image size {tile_size}; got {list(out)}"
        )
    return out


def select_best_resolution(image_size: Any, pinpoints: Any) -> tuple[int, int]:
    """The pinpoint resolution an image of ``image_size`` is resized and padded to.

    Picks the resolution that keeps the most of the image's pixels after an aspect-preserving
    downscale (``min(h * w, scaled pixels)``); ties go to the one with the least padding, then
    to the earlier entry.

    Args:
      image_size: the original ``(height, width)``.
      pinpoints: the candidate ``(height, width)`` resolutions.

    Returns:
      ``(height, width)`` of the chosen resolution.

    Raises:
      ValueError: for a malformed size or pinpoint list.

    Example:
      >>> select_best_resolution((30, 50), [[24, 48], [48, 24], [48, 48]])
      (48, 48)
    """
    h, w = _size(image_size, "image_size", "select_best_resolution")
    best, best_eff, best_waste = None, 0, float("inf")
    for ph, pw in check_pinpoints(pinpoints, where="select_best_resolution"):
        scale = min(pw / w, ph / h)
        effective = min(int(w * scale) * int(h * scale), w * h)
        waste = ph * pw - effective
        if effective > best_eff or (effective == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ph, pw), effective, waste
    return best


def _unpad(image_size: tuple[int, int], rows: int, cols: int) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: the rows / cols of a ``rows x cols`` grid that cover the image."""
    h, w = image_size
    if w / h > cols / rows:  # wider than the grid: padding above and below
        pad = (rows - int(round(h * (cols / w), 7))) // 2
        return pad, rows - pad, 0, cols
    pad = (cols - int(round(w * (rows / h), 7))) // 2
    return 0, rows, pad, cols - pad


@dataclasses.dataclass(frozen=True)
class AnyresLayout:
    """Where each visual token of one LLaVA-NeXT image comes from (static geometry).

    Attributes:
      image_size: the original ``(height, width)``.
      resolution: the chosen pinpoint ``(height, width)``.
      tiles: the tile grid ``(tiles_h, tiles_w)`` of that resolution (the base tile excluded).
      side: g, patches per tile side.
      rows, cols: ``(start, stop)`` of the feature-grid rows / columns kept by the unpadding
        (indices into the ``tiles_h * g`` rows and ``tiles_w * g`` columns).

    Example:
      >>> lay = anyres_layout((30, 50), [[24, 48], [48, 24], [48, 48]], tile_size=24, patch_size=6)
      >>> lay.tiles, lay.grid, lay.num_tiles, lay.num_tokens
      ((2, 2), (4, 8), 5, 52)
    """

    image_size: tuple[int, int]
    resolution: tuple[int, int]
    tiles: tuple[int, int]
    side: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def num_tiles(self) -> int:
        """Tiles the vision encoder runs on: the base tile plus ``tiles_h * tiles_w``."""
        return 1 + self.tiles[0] * self.tiles[1]

    @property
    def base(self) -> int:
        """Base-tile tokens, g * g."""
        return self.side * self.side

    @property
    def grid(self) -> tuple[int, int]:
        """The unpadded feature grid ``(rows, cols)`` (one newline follows each row)."""
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    @property
    def num_tokens(self) -> int:
        """Visual tokens in the LLM prompt: ``g * g + rows * (cols + 1)``."""
        r, c = self.grid
        return self.base + r * (c + 1)

    def pack_index(self) -> np.ndarray:
        """Source of every packed token: an index into the ``num_tiles * g * g`` patch
        features (tile-major, raster order in a tile), or -1 for an ``image_newline``.

        Returns:
          int32 [num_tokens].
        """
        g = self.side
        r = np.arange(*self.rows)[:, None]  # feature-grid rows kept
        c = np.arange(*self.cols)[None, :]
        tile = 1 + (r // g) * self.tiles[1] + (c // g)
        grid = tile * g * g + (r % g) * g + (c % g)  # [rows, cols]
        newline = np.full((grid.shape[0], 1), -1)
        body = np.concatenate([grid, newline], axis=1).reshape(-1)
        return np.concatenate([np.arange(g * g), body]).astype(np.int32)


def anyres_layout(
    image_size: Any, pinpoints: Any, *, tile_size: int, patch_size: int
) -> AnyresLayout:
    """The ``AnyresLayout`` of an image of ``image_size`` (LLaVA-NeXT "spatial_unpad").

    Args:
      image_size: the original ``(height, width)`` (the processor's ``image_sizes`` row).
      pinpoints: ``image_grid_pinpoints``, ``(height, width)`` multiples of ``tile_size``.
      tile_size: the vision encoder's square input size S.
      patch_size: its patch size (S must be a multiple).

    Returns:
      The ``AnyresLayout``.

    Raises:
      ValueError: for malformed sizes or pinpoints, or sizes that do not divide.

    Example:
      >>> lay = anyres_layout((40, 20), [[24, 48], [48, 24]], tile_size=24, patch_size=6)
      >>> lay.resolution, lay.tiles, lay.grid, lay.num_tokens
      ((48, 24), (2, 1), (8, 4), 56)
    """
    where = "anyres_layout"
    if not (is_int(tile_size) and is_int(patch_size) and patch_size >= 1):
        raise ValueError(f"{where}: tile_size / patch_size must be ints >= 1")
    if tile_size < patch_size or tile_size % patch_size:
        raise ValueError(
            f"{where}: tile_size must be a multiple of patch_size; got {tile_size}, {patch_size}"
        )
    size = _size(image_size, "image_size", where)
    points = check_pinpoints(pinpoints, tile_size, where)
    res = select_best_resolution(size, points)
    tiles = (res[0] // tile_size, res[1] // tile_size)
    g = tile_size // patch_size
    r0, r1, c0, c1 = _unpad(size, tiles[0] * g, tiles[1] * g)
    return AnyresLayout(size, res, tiles, g, (r0, r1), (c0, c1))
