"""The VLM testbed (issue 15 item 2): its canvases and questions against brute-force oracles,
its prompt arrays, the left-padded evaluation batch against unpadded generation, and a tiny
end-to-end run that resumes without repeating work."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax import lab
from pruneax.experiments import vlm_testbed as tb
from pruneax.models.llama import llm_config
from pruneax.models.vit import ViTConfig
from pruneax.models.vlm import VLM, VisualSelect, VLMConfig
from tests._tensorboard import scalars as tensorboard_scalars

data = tb.data  # the testbed's data module, reached through the experiment's public name


def _labels(n=500, seed=0):
    return np.random.default_rng(seed).integers(0, 10, n).astype(np.int32)


def test_canvases_follow_their_rules():
    y = _labels()
    rng = np.random.default_rng(1)
    cells = data.canvases(rng, y, 300, 3, (2, 4))
    lab_ = data.cell_labels(cells, y)
    for row_cells, row in zip(cells, lab_, strict=True):
        full = row_cells >= 0
        assert 2 <= full.sum() <= 4
        digits = row[full]
        assert len(set(digits.tolist())) == len(digits)  # distinct classes
        assert (row[~full] == data.EMPTY).all()
        assert (y[row_cells[full]] == digits).all()
    counts = (cells >= 0).sum(1)
    assert set(counts.tolist()) == {2, 3, 4}


def test_render_places_each_digit_in_its_cell():
    x = np.arange(5 * 2 * 2 * 1, dtype=np.float32).reshape(5, 2, 2, 1) + 1
    cells = np.array([[-1, 3, -1, -1, 0, -1, -1, -1, 4]])
    img = data.render(cells, x, 3, background=-7.0)
    assert img.shape == (1, 6, 6, 1)
    for cell in range(9):
        r, c = divmod(cell, 3)
        tile = img[0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
        want = x[cells[0, cell]] if cells[0, cell] >= 0 else np.full((2, 2, 1), -7.0)
        np.testing.assert_array_equal(tile, want)


def test_questions_agree_with_a_brute_force_reading_of_the_labels():
    y = _labels()
    ex = data.sample_split((3,), "t", y, 400, 3, (2, 4), data.FAMILIES)
    words = {data.position_name(c, 3): c for c in range(9)}
    assert len(words) == 9
    for q, a, f, row in zip(ex["question"], ex["answer"], ex["family"], ex["labels"], strict=True):
        present = {int(d) for d in row if d != data.EMPTY}
        if f == "exists":
            d = int(q.split("Is there a ")[1][0])
            assert a == ("yes" if d in present else "no")
        elif f == "count":
            assert a == str(len(present))
        elif f == "locate":
            cell = words[q.split("at the ")[1].split("?")[0]]
            assert a == ("none" if row[cell] == data.EMPTY else str(row[cell]))
        else:
            d = int(q.split("Where is the ")[1][0])
            assert row[words[a]] == d
    fam = np.array(ex["family"])
    assert all((fam == f).sum() == 100 for f in data.FAMILIES)
    ans = np.array(ex["answer"])
    assert 0.4 < np.mean(ans[fam == "exists"] == "yes") < 0.6
    assert 0.3 < np.mean(ans[fam == "locate"] == "none") < 0.7


def test_sampling_is_deterministic_and_captions_list_every_digit():
    y = _labels()
    a = data.sample_split((5, 2), "train", y, 50, 3, (2, 4), data.FAMILIES, 0.5)
    b = data.sample_split((5, 2), "train", y, 50, 3, (2, 4), data.FAMILIES, 0.5)
    assert a["question"] == b["question"] and (a["cells"] == b["cells"]).all()
    caps = [i for i, f in enumerate(a["family"]) if f == "caption"]
    assert 10 < len(caps) < 40
    for i in caps:
        n = int((a["labels"][i] != data.EMPTY).sum())
        assert a["answer"][i].count(" at ") == n


@pytest.mark.parametrize(
    ("text", "want"),
    [(" Yes.", "yes"), ("top  Left", "top left"), ("3,", "3"), ("none!", "none"), ("", "")],
)
def test_normalize(text, want):
    assert data.normalize(text) == want


def test_prompt_arrays_mark_exactly_the_answer_tokens():
    tok = data.ByteTokenizer()
    p = data.ChatPrompts(tok, chatml=False)
    qa, target = data.train_arrays(p, ["Q1?", "Longer Q2?"], ["yes", "top left"], 40)
    for row, t, q, a in zip(qa, target, ["Q1?", "Longer Q2?"], ["yes", "top left"], strict=True):
        qi = p.question(q)
        ans = row[t > 0]
        assert ans.tolist() == p.answer(a) and ans[-1] == tok.eos_token_id
        assert row[: len(qi)].tolist() == qi
        assert (row[len(qi) + len(ans) :] == p.pad).all()
    q, valid = data.eval_arrays(p, ["Q1?", "Longer Q2?"], 30)
    assert valid[:, -1].all() and (q[~valid] == p.pad).all()
    assert q[0, valid[0]].tolist() == p.question("Q1?")
    assert p.decode([*tok.encode("top left"), tok.eos_token_id, 65]) == "top left"
    with pytest.raises(ValueError, match="qa_length"):
        data.train_arrays(p, ["Q?"], ["a long answer"], 5)


def test_left_padded_question_generates_as_unpadded():
    """The evaluation batch pads the question turn on its left (mask 0) so that every row
    ends on its last prompt token: each row's greedy tokens equal its unpadded generation."""
    vit = ViTConfig(image_size=12, patch_size=4, num_channels=1, hidden_size=16, num_layers=2,
                    num_heads=2, mlp_dim=32, num_classes=0)  # fmt: skip
    llm = llm_config("tiny", vocab_size=259, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=2, num_kv_heads=1)  # fmt: skip
    vlm = VLM(VLMConfig(vision=vit, llm=llm, vision_layer=-1), rngs=nnx.Rngs(0))
    p = data.ChatPrompts(data.ByteTokenizer(), chatml=False)
    questions = ["Is there a 3?", "How many digits are there in it?"]
    q, valid = data.eval_arrays(p, questions, 40)
    images = jax.random.normal(jax.random.key(1), (2, 12, 12, 1))
    prefix = jnp.asarray(np.broadcast_to(p.prefix, (2, len(p.prefix))))
    nv = vlm.config.num_visual
    mask = np.concatenate([np.ones((2, len(p.prefix) + nv), bool), valid], axis=1)
    # dense: test_vlm_hf's padded batch; coverage reads the question, padding masked out
    for select in (VisualSelect("fastervlm", keep=4), VisualSelect("coverage", keep=4)):
        out = vlm.generate(images, prefix, jnp.asarray(q), 5, attention_mask=jnp.asarray(mask),
                           select=select, eos_token_id=p.eos, pad_token_id=p.pad)  # fmt: skip
        for i, text in enumerate(questions):
            alone = vlm.generate(images[i : i + 1], prefix[i : i + 1],
                                 jnp.asarray([p.question(text)]), 5, select=select,
                                 eos_token_id=p.eos, pad_token_id=p.pad)  # fmt: skip
            np.testing.assert_array_equal(np.asarray(out.tokens[i]), np.asarray(alone.tokens[0]))


def _tiny(**kw):
    return dataclasses.replace(
        tb.PRESETS["tiny"], tower_iterations=4, iterations=2, ckpt_every=2, log_every=1,
        seeds=(0, 1), eval_size=4, eval_batch=4, methods=("fastervlm", "random"), **kw,
    )  # fmt: skip


def test_tiny_run_writes_results_and_resumes_without_repeating(tmp_path, capsys):
    cfg = _tiny()
    r = tb.run(cfg, tmp_path)
    names = {"dense", "fastervlm@0.25", "random@0.25", "fastv@0.25"}
    assert set(r["evals"]["0"]) == names and set(r["evals"]["1"]) == names
    for name in names:
        s = r["summary"]["accuracy"][name]
        vals = [r["evals"][k][name]["accuracy"] for k in ("0", "1")]
        assert s["mean"] == pytest.approx(np.mean(vals))
        assert s["se"] == pytest.approx(np.std(vals, ddof=1) / np.sqrt(2))
    assert r["settings"]["fastervlm@0.25"]["flops_ratio"] < 1.0
    for f in ("results.json", "results.csv", "results.md", "accuracy.png", "accuracy_flops.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["evals"] == r["evals"]
    assert all(c.verdict in lab.VERDICTS for c in tb.claims(r))
    # TensorBoard (lab.MetricWriter): the tower's and each projector's curves, and accuracy
    # against the kept prefill FLOPs, with the numbers of results.json
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["tower/loss"]] == [1, 2, 3, 4]
    assert len(scalars["tower/cell_accuracy"]) == 4
    for seed, losses in r["losses"].items():
        got = scalars[f"projector_seed{seed}/loss"]
        assert [s for s, _ in got] == [s for s, _ in losses]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in losses], rtol=1e-6)
        for e in r["evals"][seed].values():
            tag = lab.MetricWriter.safe_tag(
                f"eval_seed{seed}/{e['method']}/accuracy_vs_flops_permille"
            )
            assert (round(1000 * e["flops_ratio"]), pytest.approx(e["accuracy"])) in scalars[tag]
    capsys.readouterr()
    again = tb.run(cfg, tmp_path)  # everything done: nothing retrained or re-evaluated
    out = capsys.readouterr().out
    assert " eval " not in out and "[projector" not in out and "[tower] step" not in out
    assert again["evals"] == r["evals"]
    with pytest.raises(ValueError, match="different config"):
        tb.run(dataclasses.replace(cfg, eval_size=8), tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("llm", "gpt", "llm must be"),
        ("digits", (0, 2), "digits must"),
        ("digits", (2, 9), "digits must"),
        ("seeds", (1, 1), "seeds must"),
        ("caption_fraction", 1.5, "caption_fraction"),
        ("methods", ("nope",), "methods must be among"),
        ("keep_ratios", (0.0,), "keep_ratios"),
        ("eval_batch", 0, "eval_batch"),
    ],
)
def test_bad_config_is_a_value_error(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        tb.run(dataclasses.replace(tb.PRESETS["tiny"], **{field: value}), tmp_path)


def test_coverage_text_ignores_masked_question_padding():
    """MMTok's text term alone (alpha = 0): the patches picked for a question padded on its left
    (mask 0) equal those picked for the unpadded question, and differ when the padding is
    declared valid (so the mask is what makes them equal)."""
    vit = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=16, num_layers=2,
                    num_heads=2, mlp_dim=32, num_classes=0)  # fmt: skip
    llm = llm_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_layers=1, num_heads=2, num_kv_heads=1)  # fmt: skip
    vlm = VLM(VLMConfig(vision=vit, llm=llm, vision_layer=-1), rngs=nnx.Rngs(3))
    sel = VisualSelect("coverage", keep=3, options={"alpha": 0.0, "tau_tv": 0.05})
    images = jax.random.normal(jax.random.key(2), (1, 16, 16, 1))
    prefix = jnp.array([[1, 2]])
    question = jnp.array([[5, 9, 17]])
    padded = jnp.array([[0] * 6 + [5, 9, 17]])
    nv = vlm.config.num_visual
    mask = jnp.array([[True] * (2 + nv) + [False] * 6 + [True] * 3])
    want = vlm.prepare(images, prefix, question, select=sel)["kept"]
    got = vlm.prepare(images, prefix, padded, attention_mask=mask, select=sel)["kept"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    wrong = vlm.prepare(images, prefix, padded, select=sel)["kept"]
    assert not np.array_equal(np.asarray(wrong), np.asarray(want))
