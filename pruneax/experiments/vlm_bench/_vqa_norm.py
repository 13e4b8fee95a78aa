"""The official VQA answer normalisation and TextVQA's soft accuracy.

Transcribed (rewritten, not copied) from ``EvalAIAnswerProcessor`` and
``TextVQAAccuracyEvaluator`` in LLaVA's ``llava/eval/m4c_evaluator.py`` (itself taken from
MMF's ``pythia/tasks/processors.py``), the evaluator LLaVA's ``eval_textvqa.py`` runs. The steps,
in the original order:

1. lower-case; delete ``,`` and ``?``; split ``'s`` into ``" 's"``; newlines/tabs to spaces.
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
   space in the (step-1) text or when the text holds a comma between two digits, and becomes a
   space otherwise; then every period not followed by a digit is deleted (at most 32 of them: the
   original passes ``re.UNICODE`` (= 32) where ``re.sub`` takes its count - kept for fidelity).
3. words: number words ``none``/``zero``...``ten`` become digits, the articles ``a an the`` are
   dropped, and the contraction table maps e.g. ``dont`` -> ``don't``.

The comma-between-digits rule can never fire in practice (step 1 already deleted every comma);
it is kept as in the original. Deviations: none known.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# "key=value" pairs of the original contraction table (keys with capitals can never match after
# lower-casing, as in the original).
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())
NUMBERS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
NUMBERS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<"]
PUNCTUATION += ["@", "`", ",", "?", "!"]
# The original pattern "(?!<=\d)(\.)(?!\d)" has a typo ("(?!<=" instead of "(?<!"): its first
# look-ahead is always true at a period, so it deletes every period not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_COUNT = 32  # re.UNICODE, passed as re.sub's count in the original


def _punctuation(text: str) -> str:
    """Step 2: the punctuation and period rules."""
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if (touches_space or digit_comma) else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _words(text: str) -> str:
    """Step 3: number words to digits, articles dropped, contractions restored."""
    kept = [NUMBERS.get(w, w) for w in text.lower().split()]
    kept = [w for w in kept if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in kept)


def normalize_answer(text: str) -> str:
    """Normalise one VQA answer exactly as the EvalAI answer processor does.

    Args:
      text: a generated or a human answer.

    Returns:
      The normalised answer (``"Two dogs."`` -> ``"2 dogs"``).
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(text))


def answer_scores(human_answers: Sequence[str]) -> dict[str, float]:
    """VQA soft scores of every distinct (normalised) human answer.

    For each of the 10 leave-one-out subsets of the human answers, an answer scores
    ``min(1, matches / 3)``; its score is the mean over the 10 subsets (the official evaluator).

    Args:
      human_answers: the 10 human answers of one question (raw strings).

    Returns:
      ``{normalised answer: score in [0, 1]}``.

    Raises:
      ValueError: if there are not 10 answers (the original asserts it).
    """
    if len(human_answers) != 10:
        raise ValueError(f"answers: expected 10 human answers, got {len(human_answers)}")
    norm = [normalize_answer(a) for a in human_answers]
    counts = Counter(norm)
    scores = {}
    for ans, n in counts.items():
        # leaving out one of the n matching answers leaves n - 1, any other one leaves n
        left_out = [min(1.0, (n - (a == ans)) / 3) for a in norm]
        scores[ans] = sum(left_out) / len(left_out)
    return scores


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The VQA accuracy (0..1) of one prediction against the 10 human answers."""
    return answer_scores(human_answers).get(normalize_answer(prediction), 0.0)
