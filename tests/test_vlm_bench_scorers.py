"""The VLM benchmark readers and official scorers, on tiny hand-made fixtures.

Each benchmark's fixture is written in its official file format (POPE's JSON-lines question
files, GQA's balanced-questions JSON, TextVQA 0.5.1, MME's release folders, ScienceQA's
problems.json + pid_splits.json, MMBench's TSV with base64 images), read back, and scored on
hand-written predictions; every expected number is computed by hand in the comments (the
oracles), following the official evaluation code each scorer cites.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

import pruneax.experiments.vlm_bench as vb

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def _png(path=None) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _score(name, items, answers):
    """Score ``answers`` (a list aligned with ``items``)."""
    assert len(items) == len(answers)
    return vb.BENCHMARKS[name].score(
        items, {it.id: a for it, a in zip(items, answers, strict=True)}
    )


def _missing_one(name, items):
    preds = {it.id: "x" for it in items[1:]}
    with pytest.raises(ValueError, match="missing 1 of"):
        vb.BENCHMARKS[name].score(items, preds)


def test_all_benchmarks_are_registered():
    assert {"pope", "gqa", "textvqa", "mme", "scienceqa", "mmbench"} <= set(vb.BENCHMARKS)
    for name, bench in vb.BENCHMARKS.items():
        assert isinstance(bench, vb.Benchmark) and bench.name == name


# ----------------------------------------------------------------------------------------- POPE


def _pope_dir(tmp_path):
    labels = {
        "random": ["yes", "yes", "no", "no"],
        "adversarial": ["yes", "no", "no", "yes"],
        "popular": ["yes", "no"],
    }
    for split, labs in labels.items():
        rows = [
            {
                "question_id": i + 1,
                "image": f"COCO_val2014_{i:012d}.jpg",
                "text": f"Is there a {split}?",
                "label": lab,
            }
            for i, lab in enumerate(labs)
        ]
        (tmp_path / f"coco_pope_{split}.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
    for i in range(4):
        _png(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    return tmp_path


def test_pope_reads_and_scores_like_llava_eval_pope(tmp_path):
    pope = vb.BENCHMARKS["pope"]
    items = pope.read(_pope_dir(tmp_path))
    assert len(items) == 10
    by_id = {it.id: it for it in items}
    first = by_id["random/1"]
    assert first.question == f"Is there a random?\n{SHORT}"
    assert first.answer == "yes" and first.meta["split"] == "random"
    assert first.image.endswith("val2014/COCO_val2014_000000000000.jpg")
    assert Image.open(first.image).size == (4, 4)
    assert len(pope.read(tmp_path, split="random", limit=1)) == 1

    preds = {
        # random, labels yes yes no no
        "random/1": "Yes, there is a dog in the image.",  # yes -> TP
        "random/2": "No, there is not.",  # "No" -> no -> FN
        "random/3": "There is no cat.",  # "no" -> no -> TN
        "random/4": "Yes",  # yes -> FP
        # adversarial, labels yes no no yes
        "adversarial/1": "Yes. But not really.",  # only the first sentence: yes -> TP
        "adversarial/2": "Nothing here",  # no word equals no/not/No -> yes -> FP
        "adversarial/3": "NO",  # "NO" is not matched (case) -> yes -> FP
        "adversarial/4": "There is a cup, not a dog",  # "not" -> no -> FN
        # popular, labels yes no
        "popular/1": "yes",  # TP
        "popular/2": "no",  # TN
    }
    out = pope.score(items, preds)
    r, a, p = (out["splits"][s] for s in ("random", "adversarial", "popular"))
    # random: TP=FP=TN=FN=1 -> acc 2/4, precision 1/2, recall 1/2, F1 1/2, yes ratio 2/4
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (1, 1, 1, 1)
    assert r["accuracy"] == pytest.approx(50) and r["f1"] == pytest.approx(50)
    assert r["yes_ratio"] == pytest.approx(50)
    # adversarial: TP=1 FP=2 TN=0 FN=1 -> acc 1/4; P=1/3, R=1/2, F1=2PR/(P+R)=(1/3)/(5/6)=0.4
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (1, 2, 0, 1)
    assert a["accuracy"] == pytest.approx(25)
    assert a["precision"] == pytest.approx(100 / 3) and a["recall"] == pytest.approx(50)
    assert a["f1"] == pytest.approx(40) and a["yes_ratio"] == pytest.approx(75)
    # popular: all right -> acc 100, F1 100
    assert p["accuracy"] == pytest.approx(100) and p["f1"] == pytest.approx(100)
    # main = mean F1 = (50 + 40 + 100) / 3; mean accuracy = (50 + 25 + 100) / 3
    assert out["main"] == pytest.approx(190 / 3)
    assert out["accuracy"] == pytest.approx(175 / 3)
    json.dumps(out)
    _missing_one("pope", items)


def test_pope_bad_input(tmp_path):
    pope = vb.BENCHMARKS["pope"]
    with pytest.raises(ValueError, match="data_dir"):
        pope.read(tmp_path / "nope")
    with pytest.raises(ValueError, match="image folder"):
        pope.read(tmp_path)
    _pope_dir(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        pope.read(tmp_path, split="hard")
    with pytest.raises(ValueError, match="limit"):
        pope.read(tmp_path, limit=0)
    (tmp_path / "coco_pope_random.json").write_text('{"question_id": 1, "image": "a.jpg"}\n')
    with pytest.raises(ValueError, match="field 'label'"):
        pope.read(tmp_path, split="random")
    (tmp_path / "coco_pope_random.json").write_text("{not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        pope.read(tmp_path, split="random")
    (tmp_path / "coco_pope_popular.json").unlink()
    with pytest.raises(ValueError, match=r"coco_pope_popular\.json"):
        pope.read(tmp_path, split="popular")


# ------------------------------------------------------------------------------------------ GQA


def test_gqa_exact_match(tmp_path):
    questions = {
        "q1": {
            "imageId": "n1",
            "question": "Is the sky blue?",
            "answer": "yes",
            "types": {"structural": "verify", "semantic": "attr"},
        },
        "q2": {
            "imageId": "n2",
            "question": "What is it?",
            "answer": "table",
            "types": {"structural": "query", "semantic": "obj"},
        },
        "q3": {
            "imageId": "n1",
            "question": "Which side?",
            "answer": "left",
            "types": {"structural": "query", "semantic": "rel"},
        },
    }
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    _png(tmp_path / "images" / "n1.jpg")
    gqa = vb.BENCHMARKS["gqa"]
    items = gqa.read(tmp_path)
    assert [it.id for it in items] == ["q1", "q2", "q3"]
    assert items[0].question == f"Is the sky blue?\n{SHORT}" and items[0].answer == "yes"
    assert items[1].image.endswith("images/n2.jpg")
    assert len(gqa.read(tmp_path, split="testdev", limit=2)) == 2
    # q1 "Yes." -> rstrip('.') + lower -> "yes": right
    # q2 "The table" -> "the table" != "table": wrong (exact match, no article removal)
    # q3 " Left.. " -> strip, rstrip('.') -> "Left" -> "left": right
    out = _score("gqa", items, ["Yes.", "The table", " Left.. "])
    assert out["main"] == pytest.approx(200 / 3)  # 2 of 3
    assert out["answer_type"] == {"binary": pytest.approx(100), "open": pytest.approx(50)}
    assert out["structural"]["query"] == pytest.approx(50)
    assert out["semantic"] == {"attr": 100, "obj": 0, "rel": 100}
    _missing_one("gqa", items)
    with pytest.raises(ValueError, match=r"val_balanced_questions\.json"):
        gqa.read(tmp_path, split="val")
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps({"q1": {"imageId": 1}}))
    with pytest.raises(ValueError, match="field 'question'"):
        gqa.read(tmp_path)


# -------------------------------------------------------------------------------------- TextVQA


def _textvqa_dir(tmp_path, answers):
    rows = [
        {
            "question_id": 100 + i,
            "image_id": f"img{i}",
            "question": f"question {i}?",
            "answers": ans,
            "set_name": "val",
        }
        for i, ans in enumerate(answers)
    ]
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "train_images").mkdir(exist_ok=True)
    return tmp_path


def test_textvqa_official_normalisation_and_soft_accuracy(tmp_path):
    cases = [
        # (10 human answers, prediction, hand-computed VQA accuracy)
        # contraction: "dont" -> "don't"; 3 humans said it: the 3 leave-outs of one of them keep
        # 2 matches (2/3), the 7 others keep 3 (1): (3 * 2/3 + 7) / 10 = 0.9
        (["don't"] * 3 + ["no"] * 7, "dont", 0.9),
        # number word + trailing period: "Two." -> "2"; humans "2", "two" -> "2" twice:
        # leave-outs: 2 keep 1 match (1/3), 8 keep 2 (2/3): (2/3 + 16/3) / 10 = 0.6
        (["2", "two"] + ["3"] * 8, "Two.", 0.6),
        # articles dropped and case folded: "A red car" and "the Red Car" -> "red car"; 4 humans,
        # every leave-out keeps >= 3 matches -> 1.0
        (["the Red Car"] * 4 + ["blue"] * 6, "A red car", 1.0),
        # comma between digits ("1,000" -> "1000") and "!" not touching a space -> a space:
        # "1000!" -> "1000"; 2 humans -> 0.6
        (["1,000", "1000"] + ["10"] * 8, "1000!", 0.6),
        # period rule: a period before a digit stays, the final one goes: "3.5." -> "3.5" -> 1.0
        (["3.5"] * 10, "3.5.", 1.0),
        # ... so "3.5" and "35" stay different answers -> 0
        (["35"] * 10, "3.5", 0.0),
        # a hyphen inside a word becomes a space on both sides: "T-Shirt" == "t-shirt" -> 1.0
        (["t-shirt"] * 10, "T-Shirt", 1.0),
        # wrong answer -> 0
        (["dog"] * 10, "cat", 0.0),
    ]
    root = _textvqa_dir(tmp_path, [c[0] for c in cases])
    tv = vb.BENCHMARKS["textvqa"]
    items = tv.read(root)
    assert items[0].id == "100" and items[0].question == f"question 0?\n{SHORT}"
    assert items[0].answer == cases[0][0] and items[0].image.endswith("train_images/img0.jpg")
    out = _score("textvqa", items, [c[1] for c in cases])
    # mean of 0.9, 0.6, 1, 0.6, 1, 0, 1, 0 = 5.1 / 8
    assert out["main"] == pytest.approx(100 * 5.1 / 8)
    for (_, pred, expected), it in zip(cases, items, strict=True):
        assert tv.score([it], {it.id: pred})["main"] == pytest.approx(100 * expected), pred
    _missing_one("textvqa", items)


def test_textvqa_ocr_prompt_and_bad_input(tmp_path):
    root = _textvqa_dir(tmp_path, [["a"] * 10, ["b"] * 10])
    tv = vb.BENCHMARKS["textvqa"]
    with pytest.raises(ValueError, match=r"TextVQA_Rosetta_OCR_v0\.2_val\.json"):
        tv.read(root, split="val_ocr")
    ocr = {
        "data": [
            {"image_id": "img0", "ocr_tokens": ["STOP", "55"]},
            {"image_id": "img1", "ocr_tokens": []},
        ]
    }
    (root / "TextVQA_Rosetta_OCR_v0.2_val.json").write_text(json.dumps(ocr))
    first, second = tv.read(root, split="val_ocr")
    assert first.question == f"question 0?\nReference OCR token: STOP, 55\n{SHORT}"
    assert second.question == f"question 1?\n{SHORT}"  # no tokens: no OCR line
    with pytest.raises(ValueError, match="split must be one of"):
        tv.read(root, split="test")
    _textvqa_dir(tmp_path, [["a"] * 9])
    with pytest.raises(ValueError, match="expected 10 answers"):
        tv.read(root)
    (root / "train_images").rmdir()
    with pytest.raises(ValueError, match="train_images"):
        tv.read(root)


# ------------------------------------------------------------------------------------------ MME


def _mme_dir(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"

    def qa(path, pairs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs))

    # flat layout (existence): image and .txt side by side
    for name in ("a", "b"):
        _png(root / "existence" / f"{name}.jpg")
        qa(
            root / "existence" / f"{name}.txt",
            [("Is there a dog?", "Yes"), ("Is there a cat?", "No")],
        )
    # images/ + questions_answers_YN/ layout (artwork)
    _png(root / "artwork" / "images" / "c.jpg")
    qa(
        root / "artwork" / "questions_answers_YN" / "c.txt",
        [("Is it Monet?", "No"), ("Is it Degas?", "Yes")],
    )
    _png(root / "code_reasoning" / "d.png")
    qa(root / "code_reasoning" / "d.txt", [("Is the output 3?", "Yes"), ("Is the output 4?", "No")])
    return tmp_path


def test_mme_acc_plus_and_totals(tmp_path):
    mme = vb.BENCHMARKS["mme"]
    root = _mme_dir(tmp_path)
    items = [
        it for t in ("existence", "artwork", "code_reasoning") for it in mme.read(root, split=t)
    ]
    assert [it.id for it in items[:2]] == ["existence/a.jpg/0", "existence/a.jpg/1"]
    assert (
        items[0].question == "Is there a dog? Please answer yes or no." and items[0].answer == "yes"
    )
    assert items[4].image.endswith("artwork/images/c.jpg") and items[4].answer == "no"
    assert len(mme.read(root, split="existence", limit=1)) == 2
    answers = [
        "Yes, there is.",  # "yes," first 4 chars contain yes -> yes: right
        "No",  # right
        "yes",  # right
        "I think not",  # first 4 chars "i th" -> other: wrong
        "Not really",  # "not " contains "no" -> no: right
        "Yes",  # right
        "no",  # wrong (gt yes)
        "no",  # right
    ]
    out = _score("mme", items, answers)
    ex, art, code = (out["subtasks"][t] for t in ("existence", "artwork", "code_reasoning"))
    # existence: 3/4 questions right -> acc 75; image a both right, b not -> acc+ 1/2 = 50
    assert (ex["acc"], ex["acc_plus"], ex["score"]) == pytest.approx((75, 50, 125))
    # artwork: both right -> 100 + 100
    assert art["score"] == pytest.approx(200)
    # code_reasoning: 1/2 -> acc 50, acc+ 0 -> 50
    assert (code["acc"], code["acc_plus"]) == pytest.approx((50, 0))
    # perception = 125 + 200; cognition = 50; main = 375
    assert out["perception"] == pytest.approx(325) and out["cognition"] == pytest.approx(50)
    assert out["main"] == pytest.approx(375)
    _missing_one("mme", items)
    with pytest.raises(ValueError, match="needs its 2 questions"):
        mme.score(items[:1], {items[0].id: "yes"})


def test_mme_llava_your_results_layout(tmp_path):
    # images only in the release folder, questions in LLaVA's eval_tool/Your_Results/<subtask>.txt
    _png(tmp_path / "MME_Benchmark_release_version" / "count" / "e.jpg")
    _png(tmp_path / "MME_Benchmark_release_version" / "count" / "f.jpg")
    results = tmp_path / "eval_tool" / "Your_Results" / "count.txt"
    results.parent.mkdir(parents=True)
    results.write_text("e.jpg\tTwo?\tYes\ne.jpg\tThree?\tNo\nf.jpg\tOne?\tNo\nf.jpg\tFour?\tYes\n")
    items = vb.BENCHMARKS["mme"].read(tmp_path, split="count")
    assert [(it.id, it.question, it.answer) for it in items] == [
        ("count/e.jpg/0", "Two?", "yes"),
        ("count/e.jpg/1", "Three?", "no"),
        ("count/f.jpg/0", "One?", "no"),
        ("count/f.jpg/1", "Four?", "yes"),
    ]
    # e: both right; f: first wrong -> acc 3/4 = 75, acc+ 1/2 = 50
    out = _score("mme", items, ["yes", "no", "yes", "yes"])
    assert out["subtasks"]["count"]["score"] == pytest.approx(125)
    results.write_text("e.jpg\tTwo?\tYes\n")
    with pytest.raises(ValueError, match="must have 2 questions"):
        vb.BENCHMARKS["mme"].read(tmp_path, split="count")


def test_mme_bad_input(tmp_path):
    mme = vb.BENCHMARKS["mme"]
    root = _mme_dir(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        mme.read(root, split="hallucination")
    with pytest.raises(ValueError, match="subtask folder 'count'"):
        mme.read(root, split="count")
    with pytest.raises(ValueError, match="subtask folder 'count'"):
        mme.read(root, split="perception")
    txt = root / "MME_Benchmark_release_version" / "existence" / "a.txt"
    txt.write_text("q1\tYes\nq2\tNo\nq3\tYes\n")
    with pytest.raises(ValueError, match="must hold 2 questions"):
        mme.read(root, split="existence")
    txt.write_text("q1\tMaybe\nq2\tNo\n")
    with pytest.raises(ValueError, match="malformed line 1"):
        mme.read(root, split="existence")


# ------------------------------------------------------------------------------------ ScienceQA


def _sqa_dir(tmp_path):
    def prob(choices, answer, image=True, hint="", subject="natural science"):
        return {
            "question": "Which one?",
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "image": "image.png" if image else None,
            "subject": subject,
            "split": "test",
        }

    problems = {
        "1": prob(["x", "y", "z"], 1, hint="Look at the picture."),
        "2": prob(["x", "y"], 0),
        "3": prob(["x", "y"], 0, image=False),  # no image: not in ScienceQA-IMG
        "4": prob(["p", "q", "r", "s"], 3, subject="social science"),
        "5": prob(["red", "green"], 1, subject="social science"),
        "7": prob(["x", "y"], 0, subject="language science"),
        "8": prob(["x", "y"], 0, subject="language science"),
        "9": prob(["x", "y"], 0),
    }
    splits = {"test": ["1", "2", "3", "4", "5", "7", "8"], "val": ["9"]}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps(splits))
    for pid in ("1", "2", "4", "5", "7", "8"):
        _png(tmp_path / "test" / pid / "image.png")
    return tmp_path


def test_scienceqa_img_letter_extraction(tmp_path):
    sqa = vb.BENCHMARKS["scienceqa"]
    items = sqa.read(_sqa_dir(tmp_path))
    assert [it.id for it in items] == ["1", "2", "4", "5", "7", "8"]  # "3" has no image
    assert items[0].question == (
        f"Context: Look at the picture.\nWhich one?\nA. x\nB. y\nC. z\n{LETTER}"
    )
    assert items[1].question == f"Which one?\nA. x\nB. y\n{LETTER}"  # empty hint: no context
    assert items[0].answer == "B" and items[2].answer == "D"
    assert items[0].image.endswith("test/1/image.png")
    answers = [
        "B",  # a bare letter: right
        "(A)",  # LLaVA's rules do not parse "(A)": failed -> wrong
        "The answer is D.",  # the "The answer is X." pattern: right
        "B. green",  # "X. " prefix: right
        "C",  # a letter beyond the 2 choices: wrong
        "I do not know",  # no letter: failed -> wrong
    ]
    out = _score("scienceqa", items, answers)
    assert out["main"] == pytest.approx(50)  # 3 of 6
    assert out["failed_extractions"] == 2
    # natural: items 1 (right), 2 (wrong); social: 4, 5 (right); language: 7, 8 (wrong)
    assert out["subjects"] == {"language science": 0, "natural science": 50, "social science": 100}
    _missing_one("scienceqa", items)
    assert len(sqa.read(tmp_path, limit=2)) == 2
    with pytest.raises(ValueError, match="image folder"):
        sqa.read(tmp_path, split="val")
    with pytest.raises(ValueError, match="split must be one of"):
        sqa.read(tmp_path, split="dev")
    (tmp_path / "pid_splits.json").unlink()
    with pytest.raises(ValueError, match=r"pid_splits\.json"):
        sqa.read(tmp_path)


# -------------------------------------------------------------------------------------- MMBench


def _tsv(path, rows):
    cols = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "l2-category",
        "image",
    ]
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_mmbench_circular_from_single_copies(tmp_path):
    img = base64.b64encode(_png()).decode()
    rows = [
        {
            "index": 0,
            "question": "What color?",
            "hint": "Look.",
            "A": "red",
            "B": "blue",
            "C": "green",
            "answer": "B",
            "category": "attr",
            "l2-category": "perception",
            "image": img,
        },
        {
            "index": 1,
            "question": "How many?",
            "hint": "nan",
            "A": "one",
            "B": "two",
            "answer": "A",
            "category": "count",
            "l2-category": "reasoning",
            "image": img,
        },
        {
            "index": 2,
            "question": "Which animal?",
            "A": "cat",
            "B": "dog",
            "C": "bird",
            "D": "fish",
            "answer": "C",
            "category": "attr",
            "l2-category": "perception",
            "image": img,
        },
    ]
    _tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    mmb = vb.BENCHMARKS["mmbench"]
    items = mmb.read(tmp_path)
    # one copy per option: 3 + 2 + 4, options rotated left under fixed letters
    assert [it.id for it in items] == ["0/r0", "0/r1", "0/r2", "1/r0", "1/r1"] + [
        f"2/r{r}" for r in range(4)
    ]
    assert items[1].question == f"Look.\nWhat color?\nA. blue\nB. green\nC. red\n{LETTER}"
    assert items[3].question == f"How many?\nA. one\nB. two\n{LETTER}"  # "nan" hint dropped
    assert items[0].image == _png()
    # the right letter follows "blue": B, then A, then C; question 1: A then B;
    # question 2 ("bird", C): C, B, A, D
    assert [it.answer for it in items] == ["B", "A", "C", "A", "B", "C", "B", "A", "D"]
    answers = [
        "B",  # right
        "(A)",  # option matching strips the brackets: right
        "The answer is C.",  # one letter token: right
        "one",  # no letter; text matching: "one" is option A here: right
        "two",  # no letter; text matching: "two" is option A in this rotation -> A != B: wrong
        "C",  # right
        "B. bird",  # one letter token "B" (shown as "bird" in this rotation): right
        "A bird",  # one letter token "A": right
        "I am not sure",  # no letter, no option text: unmatched -> wrong
    ]
    out = _score("mmbench", items, answers)
    # question 0 all right; question 1 fails on r1; question 2 fails on r3 -> circular 1/3
    assert out["main"] == pytest.approx(100 / 3) and out["n_questions"] == 3
    # vanilla: 7 of 9 copies right
    assert out["vanilla"] == pytest.approx(700 / 9)
    assert out["circular_category"] == {"attr": pytest.approx(50), "count": 0}
    assert out["circular_l2_category"] == {"perception": pytest.approx(50), "reasoning": 0}
    # attr: 3 + 3 of 7 copies; count: 1 of 2
    assert out["vanilla_category"] == {"attr": pytest.approx(600 / 7), "count": pytest.approx(50)}
    _missing_one("mmbench", items)
    assert len(mmb.read(tmp_path, limit=1)) == 3  # the first question with its 3 copies


def test_mmbench_given_circular_copies_and_bad_input(tmp_path):
    img = base64.b64encode(_png()).decode()
    rows = [
        {
            "index": 5,
            "question": "Q?",
            "A": "yes",
            "B": "no",
            "answer": "A",
            "category": "c",
            "image": img,
        },
        # the legacy TSVs hold the rotated copy at index + 1e6; its image refers to index 5
        {
            "index": 1000005,
            "question": "Q?",
            "A": "no",
            "B": "yes",
            "answer": "B",
            "category": "c",
            "image": "5",
        },
    ]
    path = tmp_path / "mmbench_dev_20230712.tsv"
    _tsv(path, rows)
    mmb = vb.BENCHMARKS["mmbench"]
    items = mmb.read(path)  # a TSV path works too
    assert [it.id for it in items] == ["5", "1000005"]
    assert items[1].image == _png() and items[1].meta["group"] == items[0].meta["group"] == "5"
    out = _score("mmbench", items, ["A", "A"])  # the copy is wrong -> circular 0, vanilla 50
    assert out["main"] == 0 and out["vanilla"] == pytest.approx(50)
    assert _score("mmbench", items, ["A", "B"])["main"] == pytest.approx(100)
    with pytest.raises(ValueError, match="split must be one of"):
        mmb.read(tmp_path, split="val")
    with pytest.raises(ValueError, match=r"MMBench_TEST_EN\.tsv"):
        mmb.read(tmp_path, split="test")
    rows[0]["answer"] = "E"
    _tsv(path, rows)
    with pytest.raises(ValueError, match="malformed row index 5"):
        mmb.read(path)
    rows[0]["answer"], rows[1]["answer"] = "", ""  # the hidden test split: readable, not scorable
    _tsv(path, rows)
    items = mmb.read(path)
    with pytest.raises(ValueError, match="without an answer"):
        mmb.score(items, {it.id: "A" for it in items})
    path.write_text("index\tquestion\n1\tq\n")
    with pytest.raises(ValueError, match="must be a TSV with columns"):
        mmb.read(path)
