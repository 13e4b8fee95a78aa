"""The runner's settings: a method name and a keep ratio -> a pre-LLM ``VisualSelect`` and,
for in-LLM methods, a builder of the spec whose image span is ``[P, P + n)`` for a batch's
prefix length ``P`` and ``n`` visual tokens entering the LLM.

Names follow ``pruneax.experiments.vlm_token_pruning``: every pre-LLM method of
``VLM_SELECT_METHODS`` (aliases included; ``"feather_pre"`` for the registry's ``"feather"``,
whose bare name is the in-LLM FEATHER), ``VISION_SELECT_METHODS`` (``"flowcut"``: inside the
vision encoder; ``VLM`` only, LLaVA-NeXT refuses it) and its ``PRE_VARIANTS``
(``"coverage_vision"``);
in-LLM ``"fastv"`` / ``"feather"`` (one stage at ``fastv_layer``, FastV's K = 2 by default)
and ``"todre"`` (max-sum diversity before the LLM, then ToDRE's stage 2 at 7L/8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pruneax.experiments.vlm_token_pruning import LLM_SPECS, PRE_VARIANTS, pre_select
from pruneax.models.vlm import VISION_SELECT_METHODS, VLM_SELECT_METHODS, VisualSelect

NO_SELECT = VisualSelect()


def method_names() -> tuple[str, ...]:
    """Every method name the runner accepts (read now from the token registry).

    Returns:
      The names: ``"none"``, the pre-LLM methods (aliases, ``"feather_pre"``, ``"flowcut"``,
      ``"coverage_vision"``), then the in-LLM ``"fastv"``, ``"feather"``, ``"todre"``.

    Raises:
      Nothing.

    Example:
      >>> from pruneax.experiments.vlm_bench import method_names
      >>> names = method_names()
      >>> names[0], "fastervlm" in names, names[-4:]
      ('none', True, ('fastv', 'feather', 'todre', 'transprune'))
    """
    pre = [m for m in VLM_SELECT_METHODS if m not in LLM_SPECS]
    pre += [f"{m}_pre" for m in VLM_SELECT_METHODS if m in LLM_SPECS]
    pre += list(VISION_SELECT_METHODS)
    return (*pre, *PRE_VARIANTS, *LLM_SPECS)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One evaluated (method, keep): ``select`` before the LLM, ``llm`` the in-LLM method
    (None, ``"fastv"``, ``"feather"`` or ``"todre"``)."""

    name: str
    method: str
    keep: float | None
    select: VisualSelect
    llm: str | None = None

    @property
    def text_guided(self) -> bool:
        """Whether selection reads the question (its padding would change the result)."""
        return self.select.method == "coverage" and self.select.coverage_text


def parse_settings(methods: Sequence[str], keep: Sequence[float]) -> list[Setting]:
    """The settings of ``methods`` x ``keep`` (``"none"`` once, dense).

    Raises:
      ValueError: for an unknown method, an empty list, or a keep outside (0, 1].
    """
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods must be a non-empty list of names; got {methods!r}")
    if isinstance(keep, (str, int, float)) or not keep:
        raise ValueError(f"keep must be a non-empty list of ratios in (0, 1]; got {keep!r}")
    known = method_names()
    for m in methods:
        if m not in known:
            raise ValueError(f"methods: unknown method {m!r}; expected one of {list(known)}")
    for r in keep:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValueError(f"keep: each budget must be a ratio in (0, 1]; got {r!r}")
    out: list[Setting] = []
    seen: set[str] = set()
    for m in dict.fromkeys(methods):
        for r in [None] if m == "none" else [float(x) for x in dict.fromkeys(keep)]:
            name = m if r is None else f"{m}@{r:g}"
            if name in seen:
                continue
            seen.add(name)
            if m == "none":
                out.append(Setting(name, m, None, NO_SELECT))
            elif m == "todre":
                out.append(Setting(name, m, r, VisualSelect("maxsum", keep=r), "todre"))
            elif m in LLM_SPECS:
                out.append(Setting(name, m, r, NO_SELECT, m))
            else:
                out.append(Setting(name, m, r, pre_select(m, r)))
    return out


def llm_spec(
    setting: Setting, start: int, n: int, *, layer: int, num_layers: int, grid: Any
) -> Any:
    """The in-LLM spec of ``setting`` over the image span ``[start, start + n)``, or None.

    FastV keeps ``round(keep * n)`` image tokens from ``layer`` on; FEATHER one stage at
    ``layer`` with the same budget (``FeatherSpec.with_budget``, grid ``grid``); ToDRE's stage
    2 at ``min(round(7 L / 8), L - 1)``; TransPrune one stage at ``layer`` with the same budget
    (``TransPruneSpec.with_budget``).

    Raises:
      ValueError: when FEATHER cannot fit its grid and a scored token in the budget.
    """
    if setting.llm is None:
        return None
    cls = LLM_SPECS[setting.llm]
    if setting.llm == "todre":
        deep = min(round(7 * num_layers / 8), num_layers - 1)
        return cls(start=start, stop=start + n, layer=deep)
    k = VisualSelect("topk", keep=setting.keep).num_kept(n)
    if setting.llm == "fastv":
        return cls(start=start, stop=start + n, layer=layer, keep_ratio=k / n)
    if setting.llm == "transprune":
        return cls.with_budget(start, start + n, k, layer)
    spec = cls.with_budget(start, start + n, k, layer, grid=grid)
    if spec is None:
        raise ValueError(
            f"methods: {setting.name!r}: FEATHER cannot keep its grid plus a scored token "
            f"within {k} of {n} visual tokens; use a larger keep"
        )
    return spec


def retained(setting: Setting, n_in: int, spec: Any) -> int:
    """Visual tokens that reach the LLM's last layer (``n_in`` enter it)."""
    if spec is None:
        return n_in
    if setting.llm == "todre":
        return 0 if getattr(spec, "physical", False) else n_in
    keep = getattr(spec, "num_keep", getattr(spec, "num_kept", None))
    if keep is not None:
        return int(keep[-1] if isinstance(keep, tuple) else keep)
    return n_in
