"""A paper's claim set beside a measured result, with a verdict that is computed, never typed.

The rule for two accuracies measured on ``n`` examples: "a beats b" **holds** when ``a - b``
exceeds two standard errors of a difference of two binomial proportions
(``sqrt(2 p (1 - p) / n)``, ``p`` their mean), **does not hold** when it is that far the other
way, and is **within noise** otherwise; "a matches b" holds unless a is worse by more than two
standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

HOLDS, FAILS, NOISE, NA = "holds", "does not hold", "within noise", "not measured"
VERDICTS = (HOLDS, FAILS, NOISE, NA)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One paper claim beside what a run measured.

    Attributes:
      paper: who claims it.
      claim: the claim, in words.
      measured: the numbers that decide it.
      verdict: one of ``VERDICTS``.

    Raises:
      ValueError: for a verdict outside ``VERDICTS``.

    Example:
      >>> from pruneax import lab
      >>> lab.Claim("LTH", "tickets match dense", "98.1 vs 98.0", lab.HOLDS).verdict
      'holds'
    """

    paper: str
    claim: str
    measured: str
    verdict: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"Claim: verdict must be one of {VERDICTS}; got {self.verdict!r}")


def compare(a: float, b: float, n: int, *, more: bool = True) -> tuple[str, str]:
    """Verdict on "a > b" (``more``) or "a matches b" (not ``more``) for two accuracies.

    Args:
      a, b: accuracies in [0, 1].
      n: examples each was measured on.
      more: True for "a beats b", False for "a is not worse than b".

    Returns:
      ``(verdict, text)``; the text gives both values, the difference in points and 2 SE.
      ``NA`` when a value is not finite or ``n <= 0``.

    Example:
      >>> from pruneax import lab
      >>> lab.compare(0.92, 0.88, 1000)[0], lab.compare(0.90, 0.89, 1000)[0]
      ('holds', 'within noise')
      >>> lab.compare(0.89, 0.90, 1000, more=False)[0]
      'holds'
    """
    if not (math.isfinite(a) and math.isfinite(b)) or n <= 0:
        return NA, "-"
    p = min(max((a + b) / 2, 1e-3), 1 - 1e-3)
    two_se = 2 * math.sqrt(2 * p * (1 - p) / n)
    d = a - b
    text = f"{100 * a:.2f} vs {100 * b:.2f} ({100 * d:+.2f} pts; 2 SE = {100 * two_se:.2f}, n={n})"
    if more:
        verdict = HOLDS if d > two_se else FAILS if d < -two_se else NOISE
    else:
        verdict = HOLDS if d >= -two_se else FAILS
    return verdict, text


def versus(
    paper: str,
    claim: str,
    a: dict[str, Any] | None,
    b: dict[str, Any] | None,
    n: int,
    where: str | Callable[[dict[str, Any], dict[str, Any]], str],
    *,
    key: str = "accuracy",
    key_b: str | None = None,
    more: bool = True,
) -> Claim:
    """The claim "a beats b" (``more``) or "a matches b" on ``a[key]`` vs ``b[key_b or key]``.

    Args:
      paper, claim: as in ``Claim``.
      a, b: the two settings' result dicts; None when a setting was not run (then the claim
        is "not measured", never silently dropped).
      n: examples each was measured on.
      where: names the two settings (a callable gets both dicts).
      key, key_b: the metric read from ``a`` and from ``b`` (default: the same).
      more: see ``compare``.

    Returns:
      The ``Claim``.

    Example:
      >>> from pruneax import lab
      >>> c = lab.versus("EViT", "top-k beats random", {"accuracy": 0.95},
      ...                {"accuracy": 0.90}, 5000, "keep 0.5")
      >>> c.verdict, c.measured.split(":")[0]
      ('holds', 'keep 0.5')
      >>> lab.versus("EViT", "top-k beats random", None, {"accuracy": 0.9}, 10, "-").verdict
      'not measured'
    """
    if a is None or b is None:
        return Claim(paper, claim, "-", NA)
    verdict, numbers = compare(a[key], b[key_b or key], n, more=more)
    label = where(a, b) if callable(where) else where
    return Claim(paper, claim, f"{label}: {numbers}", verdict)
