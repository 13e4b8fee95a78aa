"""VLMEvalKit's rule-based multiple-choice answer matching (the MMBench "prefetch" step).

Followed: VLMEvalKit's ``vlmeval/utils/matching_util.py`` (``can_infer_option``,
``can_infer_text``, ``can_infer``), rewritten. Option matching: a refusal phrase gives ``"Z"``;
otherwise the characters ``.()[],:;!*#{}`` become spaces and the answer is split on whitespace;
if exactly one option letter appears as a whole token, that letter; if none does but ``"Z"``
does, ``"Z"``. Text matching (when option matching fails): the lower-cased answer contains the
lower-cased text of exactly one option. Anything else is unmatched.

Deviations: VLMEvalKit then asks ChatGPT to match the answer; offline we count an unmatched
answer as wrong (VLMEvalKit's own ``exact_matching`` policy, which maps it to ``"Z"``). The
verbose-only "A may be a quantifier" rejection is not applied (it is off by default), nor are
the later VLMEvalKit additions (a length cap on text matching, a token-position condition).
"""

from __future__ import annotations

from collections.abc import Mapping

_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def match_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """The option letter ``answer`` names as a token (``"Z"`` for a refusal), else ``None``."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(r in answer for r in _REFUSALS):
        return "Z"
    tokens = answer.translate(_SEPARATORS).split()
    named = [c for c in choices if c in tokens]
    if len(named) == 1:
        return named[0]
    if not named and "Z" in tokens:
        return "Z"
    return None


def match_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """The letter of the only option whose text the answer contains (case-insensitive)."""
    low = answer.lower()
    found = [c for c, text in choices.items() if str(text).lower() in low]
    return found[0] if len(found) == 1 else None


def infer_choice(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer``: option matching, then text matching; ``None`` if neither."""
    answer = str(answer)
    return match_option(answer, choices) or match_text(answer, choices)
