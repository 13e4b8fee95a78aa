"""Phase 2 of the dependency graph: factor layouts and the union of coupled factors.

Every axis is a row-major product of *factors* (its layout): a query projection's output
axis of size H*Dh becomes ``[H, Dh]`` once a reshape splits it into heads, and so does every
axis coupled with it. Layouts are refined to a fixed point: coupled axes get the common
refinement of their layouts (the union of the breakpoints of their suffix products, which must
form a divisibility chain; otherwise the axes are pinned). A node of the union-find is one
factor of one axis; a *group* is a class of nodes, one index space of channels that must be
removed together wherever it appears.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def refine(a: list[int], b: list[int]) -> list[int] | None:
    """The common refinement of two factor lists of equal product, or None if none exists."""
    cuts = set()
    for fs in (a, b):
        p = 1
        cuts.add(1)
        for f in reversed(fs):
            p *= f
            cuts.add(p)
    order = sorted(cuts)
    if any(hi % lo for lo, hi in itertools.pairwise(order)):
        return None
    return [hi // lo for lo, hi in reversed(list(itertools.pairwise(order)))]


def _split_back(flat: list[int], sizes: list[int]) -> list[list[int]] | None:
    """Cuts a refined factor list into consecutive axes of the given sizes."""
    out, i = [], 0
    for s in sizes:
        fs, p = [], 1
        while p < s:
            if i >= len(flat):
                return None
            fs.append(flat[i])
            p *= flat[i]
            i += 1
        if p != s:
            return None
        out.append(fs)
    return out


class Layouts:
    """Fixed-point refinement of the layouts of every axis in a ``Walk``."""

    def __init__(self, walk) -> None:
        self.walk = walk
        self.lay = {k: [[s] if s != 1 else [] for s in shape] for k, shape in walk.shapes.items()}
        self.failed: set[int] = set()  # indices into walk.same / walk.merge (offset) that failed
        self._fixpoint()

    def factors(self, ref) -> list[int]:
        key, axis = ref
        return self.lay[key][axis]

    def _set(self, ref, fs: list[int]) -> bool:
        key, axis = ref
        if self.lay[key][axis] == fs:
            return False
        self.lay[key][axis] = fs
        return True

    def _fixpoint(self) -> None:
        w = self.walk
        n_same = len(w.same)
        changed = True
        while changed:
            changed = False
            for i, (a, b) in enumerate(w.same):
                if i in self.failed:
                    continue
                fa, fb = self.factors(a), self.factors(b)
                if fa == fb:
                    continue
                r = refine(fa, fb) if math.prod(fa) == math.prod(fb) else None
                if r is None:
                    self.failed.add(i)
                    continue
                changed |= self._set(a, r) | self._set(b, list(r))
            for j, (left, right) in enumerate(w.merge):
                if n_same + j in self.failed:
                    continue
                fl = [f for ref in left for f in self.factors(ref)]
                fr = [f for ref in right for f in self.factors(ref)]
                if fl == fr:
                    continue
                r = refine(fl, fr) if math.prod(fl) == math.prod(fr) else None
                parts_l = _split_back(r, [w.shapes[k][a] for k, a in left]) if r else None
                parts_r = _split_back(r, [w.shapes[k][a] for k, a in right]) if r else None
                if parts_l is None or parts_r is None:
                    self.failed.add(n_same + j)
                    continue
                for ref, fs in zip((*left, *right), (*parts_l, *parts_r), strict=True):
                    changed |= self._set(ref, fs)


class Nodes:
    """Union-find over the factors of every axis, with pins (reasons a class is not prunable)."""

    def __init__(self, walk, layouts: Layouts) -> None:
        self.walk, self.layouts = walk, layouts
        self.index: dict = {}  # (key, axis) -> first node id of the axis
        sizes = []
        for key, axes in layouts.lay.items():
            for a, fs in enumerate(axes):
                self.index[(key, a)] = len(sizes)
                sizes.extend(fs)
        self.sizes = np.asarray(sizes, np.int64)
        self.parent = np.arange(len(sizes))
        self.pin_reasons: dict[int, set[str]] = {}
        self._unite_all()

    def nodes(self, ref) -> list[int]:
        start = self.index[ref]
        return list(range(start, start + len(self.layouts.factors(ref))))

    def find(self, n: int) -> int:
        root = n
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[n] != root:
            self.parent[n], n = root, self.parent[n]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _pin_ref(self, ref, reason: str) -> None:
        for n in self.nodes(ref):
            self.pin_reasons.setdefault(n, set()).add(reason)

    def _unite_all(self) -> None:
        w, lay = self.walk, self.layouts
        n_same = len(w.same)
        for i, (a, b) in enumerate(w.same):
            if i in lay.failed:
                why = "couples axes whose channel layouts are incompatible"
                self._pin_ref(a, why)
                self._pin_ref(b, why)
                continue
            for x, y in zip(self.nodes(a), self.nodes(b), strict=True):
                self.union(x, y)
        for j, (left, right) in enumerate(w.merge):
            if n_same + j in lay.failed:
                why = "reshaped in a way whose channel layout cannot be followed"
                for ref in (*left, *right):
                    self._pin_ref(ref, why)
                continue
            nl = [n for ref in left for n in self.nodes(ref)]
            nr = [n for ref in right for n in self.nodes(ref)]
            for x, y in zip(nl, nr, strict=True):
                self.union(x, y)
        for ref, reason in w.pins:
            self._pin_ref(ref, reason)

    def group_of(self, ref) -> list[int]:
        """The group (root node) of each factor of an axis."""
        return [self.find(n) for n in self.nodes(ref)]


def axis_keep(factors: list[int], groups: list[int], keep: dict) -> np.ndarray | None:
    """Kept indices of an axis (row-major product of its factors' kept channels), or None if
    the axis is unchanged."""
    if not any(g in keep for g in groups):
        return None
    idx = np.zeros(1, np.int64)
    for f, g in zip(factors, groups, strict=True):
        k = np.asarray(keep[g], np.int64) if g in keep else np.arange(f)
        idx = (idx[:, None] * f + k[None, :]).reshape(-1)
    return idx
