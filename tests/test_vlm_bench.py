"""The VLM benchmark runner (``pruneax.experiments.vlm_bench.run_benchmark``) on tiny random
transformers VLMs of each family (LLaVA-1.5 with a CLIP tower, PaliGemma with SigLIP + Gemma,
LLaVA-NeXT anyres), each saved with ``save_pretrained`` together with its real transformers
processor (``LlavaProcessor`` + ``CLIPImageProcessorPil``, ``PaliGemmaProcessor`` +
``SiglipImageProcessorPil``, ``LlavaNextProcessor`` + ``LlavaNextImageProcessorPil``) and a
tiny WordLevel tokenizer built here.

Oracle: transformers' own ``model.generate(do_sample=False)`` on the processor's inputs for
the same prompt, decoded by the same tokenizer. Also: batched == one-by-one, every method
runs and feeds fewer visual tokens, resume after an interruption, config checks, results
files and the score recomputed from the JSONL predictions.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL")
tokenizers = pytest.importorskip("tokenizers")

from PIL import Image  # noqa: E402

from pruneax.experiments.vlm_bench import (  # noqa: E402
    BENCHMARKS,
    Benchmark,
    Item,
    method_names,
    register,
    run_benchmark,
)
from pruneax.models.vlm import VISION_SELECT_METHODS  # noqa: E402

WORDS = ["USER", ":", "ASSISTANT", "is", "there", "a", "cat", "dog", "in", "the", "image", "?",
         "yes", "no", "what", "color", "red", "blue", "Answer", "question", "using", "single",
         "word", "or", "phrase", "."] + [f"w{i}" for i in range(30)]  # fmt: skip
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]  # ids 0..4
EOS, IMAGE, VOCAB = 2, 4, 64
PINS = [[24, 48], [48, 24], [48, 48]]
QUESTIONS = ["is there a cat ?", "what color is the dog in the image ?", "is there a dog ?",
             "what color ?", "is the cat red or blue ?"]  # fmt: skip
SIZES = [(40, 50), (30, 30), (40, 50), (50, 30), (40, 50)]
TOY = "toy_exact"
BATCH = 5  # one batch shape shared by the default tests (compiled once)


# ------------------------------------------------------------------------ tiny checkpoints


def _tokenizer(bos: bool = True):
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip


def _redraw(model, scale: float, lm_scale: float | None = None) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            s = lm_scale if lm_scale is not None and "language_model" in name else scale
            if "norm" in name and name.endswith("weight") and lm_scale is None:
                p.copy_(1.0 + s * torch.randn_like(p))
            else:
                p.copy_(s * torch.randn_like(p))


def _finish(model, path: Path, processor, **save) -> None:
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = 1
    model.save_pretrained(path, **save)
    processor.save_pretrained(path)


def _llava(path: Path):
    vc = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
              num_hidden_layers=3, num_attention_heads=4, image_size=30, patch_size=6,
              projection_dim=16)  # fmt: skip
    tc = dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
              max_position_embeddings=256)  # fmt: skip
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE,
                                   image_seq_length=25)  # fmt: skip
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    _redraw(model, 0.15)
    ip = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    )
    proc = transformers.LlavaProcessor(
        image_processor=ip, tokenizer=_tokenizer(), patch_size=6,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    _finish(model, path, proc)
    return model


def _paligemma(path: Path):
    vc = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4, image_size=30, patch_size=6,
              vision_use_head=False)  # fmt: skip
    tc = dict(model_type="gemma", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=1, head_dim=12, vocab_size=VOCAB,
              max_position_embeddings=256)  # fmt: skip
    cfg = transformers.PaliGemmaConfig(
        vision_config=vc, text_config=tc, image_token_index=IMAGE, projection_dim=48,
        hidden_size=48, vocab_size=VOCAB,
    )  # fmt: skip
    model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "language_model" in name:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    ip = transformers.SiglipImageProcessorPil(size={"height": 30, "width": 30})
    ip.image_seq_length = 25
    proc = transformers.PaliGemmaProcessor(image_processor=ip, tokenizer=_tokenizer(bos=False))
    _finish(model, path, proc, save_original_format=False)
    return model


def _llava_next(path: Path):
    vc = transformers.CLIPVisionConfig(image_size=24, patch_size=6, hidden_size=32,
                                       intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=2)  # fmt: skip
    tc = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    cfg = transformers.LlavaNextConfig(
        vision_config=vc, text_config=tc, image_grid_pinpoints=PINS, image_token_index=IMAGE
    )
    model = transformers.LlavaNextForConditionalGeneration(cfg).eval()
    _redraw(model, 0.15)
    ip = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
        image_grid_pinpoints=PINS,
    )  # fmt: skip
    proc = transformers.LlavaNextProcessor(
        image_processor=ip, tokenizer=_tokenizer(), patch_size=6,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    _finish(model, path, proc)
    return model


BUILDERS = {"llava": _llava, "paligemma": _paligemma, "llava_next": _llava_next}


# ------------------------------------------------------------------------ toy benchmark


def _toy_read(data_dir, split=None, limit=None):
    rows = json.loads((Path(data_dir) / "items.json").read_text())
    rows = rows[:limit] if limit else rows
    return [Item(id=r["id"], image=str(Path(data_dir) / r["image"]), question=r["question"],
                 answer=r["answer"], max_new_tokens=6) for r in rows]  # fmt: skip


def _toy_score(items, predictions):
    right = [predictions[it.id].strip() == it.answer for it in items]
    return {"main": 100.0 * sum(right) / len(right), "n": len(items),
            "chars": sum(len(predictions[it.id]) for it in items)}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The three tiny checkpoints and a toy exact-match benchmark of 5 PNG items."""
    if TOY not in BENCHMARKS:
        register(Benchmark(TOY, _toy_read, _toy_score, "exact match (test)"))
    root = tmp_path_factory.mktemp("vlm_bench")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, (q, size) in enumerate(zip(QUESTIONS, SIZES, strict=True)):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(data / f"{i}.png")
        rows.append(dict(id=f"q{i}", image=f"{i}.png", question=q, answer="yes"))
    (data / "items.json").write_text(json.dumps(rows))
    return types.SimpleNamespace(root=root, data=data, models={}, rows=rows)


def checkpoint(env, family: str):
    """The family's checkpoint folder (built on first use) and its torch model."""
    if family not in env.models:
        torch.manual_seed(0)
        path = env.root / family
        env.models[family] = (path, BUILDERS[family](path))
    return env.models[family]


def run(env, family, workdir, **kw):
    path, _ = checkpoint(env, family)
    kw.setdefault("timing_repeats", 0)
    kw.setdefault("log", lambda s: None)
    return run_benchmark(path, TOY, env.data, workdir=env.root / workdir, **kw)


def predictions(env, workdir, setting="none"):
    """``[(id, prediction)]`` of a setting's JSONL in file order."""
    safe = setting.replace("@", "_at_")
    lines = (env.root / workdir / "predictions" / f"{safe}.jsonl").read_text().splitlines()
    return [(r["id"], r["prediction"]) for r in map(json.loads, lines)]


def hf_texts(env, family: str, path: Path | None = None) -> dict[str, str]:
    """transformers' greedy texts, one prompt at a time, via the checkpoint's processor (and
    its chat template when it has one)."""
    default, model = checkpoint(env, family)
    proc = transformers.AutoProcessor.from_pretrained(path or default, backend="pil")
    out = {}
    for r in env.rows:
        q = r["question"]
        text = "<image>" + q if family == "paligemma" else f"USER: <image>\n{q} ASSISTANT:"
        if getattr(proc, "chat_template", None):
            msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            text = proc.apply_chat_template(msg, add_generation_prompt=True)
        image = Image.open(env.data / r["image"]).convert("RGB")
        inputs = proc(text=text, images=image, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        new = gen[0, inputs["input_ids"].shape[1] :]
        out[r["id"]] = proc.tokenizer.decode(new, skip_special_tokens=True).strip()
    return out


# ------------------------------------------------------------------------ tests


def dense_one_by_one(env) -> dict[str, str]:
    """Dense LLaVA predictions, batch size 1 (a finished workdir is just read back)."""
    run(env, "llava", "llava_one", batch_size=1)
    return dict(predictions(env, "llava_one"))


def _check_hf(env, family, batch_size):
    res = run(env, family, f"hf_{family}_{batch_size}", batch_size=batch_size)
    got = dict(predictions(env, f"hf_{family}_{batch_size}"))
    want = hf_texts(env, family)
    assert got == want
    assert len(set(want.values())) > 1  # the texts differ between prompts
    assert res["family"] == family
    return got


def test_llava_greedy_texts_match_transformers_batched(env):
    """Dense LLaVA-1.5 in one batch of 5 prompts of different lengths (padded) == HF per
    prompt; batched == one-by-one."""
    batched = _check_hf(env, "llava", BATCH)
    assert dense_one_by_one(env) == batched


@pytest.mark.slow
@pytest.mark.parametrize("family", ["paligemma", "llava_next"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_greedy_texts_match_transformers(env, family, batch_size):
    _check_hf(env, family, batch_size)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["paligemma", "llava_next"])
def test_batched_equals_one_by_one(env, family):
    for bs in (1, 3):
        run(env, family, f"bo_{family}_{bs}", methods=["none", "fastervlm", "coverage", "fastv"],
            keep=[0.5], batch_size=bs, fastv_layer=1)  # fmt: skip
    for s in ("none", "fastervlm@0.5", "coverage@0.5", "fastv@0.5"):
        one = dict(predictions(env, f"bo_{family}_1", s))
        assert dict(predictions(env, f"bo_{family}_3", s)) == one, s


MISTRAL = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    " [/INST]{% endif %}{% endfor %}"
)


@pytest.mark.slow
def test_llava_next_chat_template(env):
    """A LLaVA-NeXT processor with a chat template: the runner uses it (HF texts equal)."""
    import shutil

    src, _ = checkpoint(env, "llava_next")
    path = env.root / "next_chat"
    shutil.copytree(src, path)
    proc = transformers.AutoProcessor.from_pretrained(path, backend="pil")
    proc.chat_template = MISTRAL
    proc.save_pretrained(path)
    run_benchmark(path, TOY, env.data, workdir=env.root / "w_next_chat", batch_size=2,
                  timing_repeats=0, log=lambda s: None)  # fmt: skip
    got = dict(predictions(env, "w_next_chat"))
    assert got == hf_texts(env, "llava_next", path)
    assert got != hf_texts(env, "llava_next")  # the template changed the prompt


def test_methods_feed_fewer_visual_tokens_llava(env):
    res = run(env, "llava", "methods_llava", methods=["none", "fastervlm", "fastv"], keep=[0.5],
              batch_size=BATCH)  # fmt: skip
    rows = {r["setting"]: r for r in res["results"]}
    assert set(rows) == {"none", "fastervlm@0.5", "fastv@0.5"}
    assert rows["none"]["visual_tokens"] == rows["none"]["retained_tokens"] == 25
    assert rows["fastervlm@0.5"]["visual_tokens"] == 12  # round(0.5 * 25)
    assert rows["fastervlm@0.5"]["retained_tokens"] == 12
    assert rows["fastv@0.5"]["visual_tokens"] == 25 and rows["fastv@0.5"]["retained_tokens"] == 12
    flops = {k: r["prefill_flops"] for k, r in rows.items()}
    assert flops["fastervlm@0.5"] < flops["fastv@0.5"] < flops["none"]
    # pruning changes what the model sees: some generated text differs from dense
    dense = dict(predictions(env, "methods_llava"))
    assert dense != dict(predictions(env, "methods_llava", "fastervlm@0.5"))


@pytest.mark.slow
def test_methods_llava_more_budgets(env):
    methods = ["none", "fastervlm", "coverage", "coverage_vision", "fastv", "feather", "todre"]
    res = run(env, "llava", "methods_more", methods=methods, keep=[0.5, 0.2], batch_size=BATCH,
              mesh="data=1,model=1")  # fmt: skip
    rows = {r["setting"]: r for r in res["results"]}
    assert rows["fastervlm@0.2"]["visual_tokens"] == 5 == rows["coverage@0.2"]["visual_tokens"]
    assert rows["todre@0.5"]["visual_tokens"] == 12
    assert rows["feather@0.2"]["retained_tokens"] == 5 == rows["fastv@0.2"]["retained_tokens"]
    flops = {k: r["prefill_flops"] for k, r in rows.items()}
    assert flops["fastv@0.2"] < flops["fastv@0.5"] < flops["none"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "paligemma", "llava_next"])
def test_every_method_runs(env, family):
    methods = list(method_names())
    if family != "llava":  # FlowCut needs a CLS encoder (not SigLIP) and no anyres tiles
        methods = [m for m in methods if m not in VISION_SELECT_METHODS]
    res = run(env, family, f"all_{family}", methods=methods, keep=[0.5], batch_size=2, limit=3,
              timing_repeats=1, fastv_layer=1)  # fmt: skip
    rows = {r["method"]: r for r in res["results"]}
    assert set(rows) == set(methods)
    dense = rows["none"]["visual_tokens"]
    for m, r in rows.items():
        assert isinstance(r["main"], float) and r["prefill_latency_s"] > 0
        if m in ("none", "fastv", "feather"):
            assert r["visual_tokens"] == dense
        else:
            assert r["visual_tokens"] < dense, m
        if m in ("fastv", "feather"):
            assert r["retained_tokens"] < dense, m
    for f in ("results.json", "results.csv", "score_vs_tokens.png", "score_vs_latency.png"):
        assert (env.root / f"all_{family}" / f).is_file()


def test_resume_after_interruption(env):
    """Interrupted after 1 batch, then after 2 more, then run to the end: the same predictions
    and scores as an uninterrupted run, no item generated twice."""
    kw = dict(methods=["none"], batch_size=1)
    full = run(env, "llava", "resume_full", **kw)
    assert run(env, "llava", "resume_cut", max_batches=1, **kw) is None
    assert len(predictions(env, "resume_cut")) == 1  # one batch done
    assert not (env.root / "resume_cut" / "results.json").exists()
    assert run(env, "llava", "resume_cut", max_batches=2, **kw) is None
    assert len(predictions(env, "resume_cut")) == 3
    resumed = run(env, "llava", "resume_cut", **kw)
    done = predictions(env, "resume_cut")
    ids = [i for i, _ in done]
    assert len(ids) == len(set(ids)) == 5  # no item done twice
    assert dict(done) == dict(predictions(env, "resume_full"))
    assert [r["score"] for r in resumed["results"]] == [r["score"] for r in full["results"]]


@pytest.mark.slow
def test_resume_across_settings(env):
    kw = dict(methods=["none", "fastervlm"], keep=[0.5], batch_size=2)
    full = run(env, "llava", "resume2_full", **kw)
    assert run(env, "llava", "resume2_cut", max_batches=4, **kw) is None  # 3 + 1 batches
    assert len(predictions(env, "resume2_cut", "fastervlm@0.5")) == 2
    resumed = run(env, "llava", "resume2_cut", **kw)
    for setting in ("none", "fastervlm@0.5"):
        done = predictions(env, "resume2_cut", setting)
        assert len(done) == len({i for i, _ in done}) == 5
        assert dict(done) == dict(predictions(env, "resume2_full", setting))
    assert [r["score"] for r in resumed["results"]] == [r["score"] for r in full["results"]]


def test_torn_jsonl_line_is_redone(env):
    """A crash mid-write leaves half a line: it is cut and the item generated again."""
    kw = dict(methods=["none"], batch_size=1)
    run(env, "llava", "torn", max_batches=2, **kw)
    path = env.root / "torn" / "predictions" / "none.jsonl"
    good = path.read_text()
    path.write_text(good + '{"id": "q2", "predic')
    run(env, "llava", "torn", **kw)
    assert dict(predictions(env, "torn")) == dense_one_by_one(env)


def test_results_files_and_score_from_predictions(env):
    res = run(env, "llava", "files", methods=["none", "fastervlm"], keep=[0.5],
              batch_size=BATCH, timing_repeats=2)  # fmt: skip
    work = env.root / "files"
    saved = json.loads((work / "results.json").read_text())
    assert [r["setting"] for r in saved["results"]] == ["none", "fastervlm@0.5"]
    items = _toy_read(env.data)
    for r in saved["results"]:
        preds = dict(predictions(env, "files", r["setting"]))
        assert r["score"] == _toy_score(items, preds)
        assert r["main"] == r["score"]["main"]
        assert r["prefill_latency_s"] > 0 and r["prefill_flops"] > 0
    csv = (work / "results.csv").read_text().splitlines()
    assert csv[0].startswith("setting,method,keep") and len(csv) == 3
    for f in ("score_vs_tokens.png", "score_vs_flops.png", "score_vs_latency.png"):
        assert (work / f).stat().st_size > 1000
    assert res["results"] == saved["results"]


def test_config_checks(env):
    run(env, "llava", "cfg", methods=["none"], limit=2, batch_size=BATCH)
    with pytest.raises(ValueError, match=r"different config.*seed"):
        run(env, "llava", "cfg", methods=["none"], limit=2, batch_size=BATCH, seed=1)
    # adding a setting to the same workdir is allowed and keeps the done predictions
    res = run(env, "llava", "cfg", methods=["none", "fastervlm"], keep=[0.5], limit=2,
              batch_size=BATCH)  # fmt: skip
    assert [r["setting"] for r in res["results"]] == ["none", "fastervlm@0.5"]
    saved = json.loads((env.root / "cfg" / "config.json").read_text())
    assert saved["settings"] == ["none", "fastervlm@0.5"]


def _cli(monkeypatch, args: list[str]) -> None:
    """``python -m pruneax.experiments.vlm_bench ARGS`` in this process."""
    import runpy

    monkeypatch.setattr("sys.argv", ["vlm_bench", *args])
    runpy.run_module("pruneax.experiments.vlm_bench", run_name="__main__", alter_sys=False)


def test_command_line(env, capsys, monkeypatch):
    path, _ = checkpoint(env, "llava")
    common = ["--checkpoint", str(path), "--benchmark", TOY, "--data", str(env.data)]
    work = ["--workdir", str(env.root / "cli"), "--methods", "none", "--keep", "0.5"]
    _cli(monkeypatch, [*common, *work, "--batch_size", str(BATCH), "--timing_repeats", "0"])
    out = capsys.readouterr().out
    assert "none: 5/5 items" in out and "items/s, ETA" in out
    assert dict(predictions(env, "cli")) == dense_one_by_one(env)
    with pytest.raises(ValueError, match="fastv_layer must be < the LLM's 3 layers"):
        _cli(monkeypatch, [*common, "--workdir", str(env.root / "cli_layer"), "--methods",
                           "fastv", "--fastv_layer", "3"])  # fmt: skip
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        _cli(monkeypatch, [*common, "--workdir", str(env.root / "cli"), "--methods", "bogus"])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(methods=["nope"]), "unknown method 'nope'"),
        (dict(methods=["fastv"], keep=[0.0]), "keep"),
        (dict(methods=["fastv"], keep=[1.5]), "keep"),
        (dict(methods="fastv"), "methods"),
        (dict(batch_size=0), "batch_size"),
        (dict(mesh="data=x"), "mesh"),
    ],
)
def test_bad_arguments_fail_before_loading(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_benchmark(tmp_path / "missing", "pope", tmp_path / "no_data", workdir=tmp_path, **kw)


def test_unknown_benchmark(tmp_path):
    with pytest.raises(ValueError, match="benchmark"):
        run_benchmark(tmp_path, "no_such_bench", tmp_path, workdir=tmp_path)


# ------------------------------------------------------------------------ real benchmarks


def _png(path: Path | None = None, seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (36, 44, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _pope(root: Path) -> None:
    for split, labels in {"random": ["yes", "no", "yes"], "popular": ["no", "yes"]}.items():
        rows = [dict(question_id=i + 1, image=f"COCO_val2014_{i:012d}.jpg",
                     text=f"Is there a {split} cat in the image?", label=lab)
                for i, lab in enumerate(labels)]  # fmt: skip
        (root / f"coco_pope_{split}.json").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (root / "coco_pope_adversarial.json").write_text(json.dumps(rows[0]) + "\n")
    for i in range(3):
        _png(root / "val2014" / f"COCO_val2014_{i:012d}.jpg", i)


def _gqa(root: Path) -> None:
    qs = {f"g{i}": dict(imageId=f"n{i % 2}", question=q, answer=a,
                        types=dict(structural="query", semantic="attr"))
          for i, (q, a) in enumerate([("Is the sky blue?", "yes"), ("What color?", "red"),
                                      ("Which side?", "left")])}  # fmt: skip
    (root / "testdev_balanced_questions.json").write_text(json.dumps(qs))
    for i in range(2):
        _png(root / "images" / f"n{i}.jpg", i)


def _textvqa(root: Path) -> None:
    rows = [dict(question_id=100 + i, image_id=f"img{i}", question=f"what is written {i}?",
                 answers=["red"] * 5 + ["w1"] * 5, set_name="val") for i in range(3)]  # fmt: skip
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": rows}))
    for i in range(3):
        _png(root / "train_images" / f"img{i}.jpg", i)


def _mme(root: Path) -> None:
    base = root / "MME_Benchmark_release_version"
    for name in ("a", "b"):
        _png(base / "existence" / f"{name}.jpg", ord(name))
        (base / "existence" / f"{name}.txt").write_text(
            "Is there a dog? Please answer yes or no.\tYes\n"
            "Is there a cat? Please answer yes or no.\tNo\n"
        )


def _scienceqa(root: Path) -> None:
    def prob(choices, answer):
        return dict(question="Which one?", choices=choices, answer=answer, hint="Look.",
                    image="image.png", subject="natural science", split="test")  # fmt: skip

    problems = {"1": prob(["cat", "dog"], 0), "2": prob(["red", "blue", "yes"], 2)}
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": ["1", "2"]}))
    for pid in problems:
        _png(root / "test" / pid / "image.png", int(pid))


def _mmbench(root: Path) -> None:
    import base64

    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category",
            "l2-category", "image"]  # fmt: skip
    rows = [dict(index=i, question="What color?", hint="nan", A="red", B="blue", C="cat",
                 answer="AB"[i], category="attr", **{"l2-category": "perception"},
                 image=base64.b64encode(_png(seed=i)).decode()) for i in range(2)]  # fmt: skip
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    (root / "MMBench_DEV_EN.tsv").write_text("\n".join(lines) + "\n")


REAL = {"pope": _pope, "gqa": _gqa, "textvqa": _textvqa, "mme": _mme, "scienceqa": _scienceqa,
        "mmbench": _mmbench}  # fmt: skip
SPLIT = {"mme": "existence"}  # the fixture holds one MME subtask


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_benchmark_end_to_end(env, name):
    """Each registered benchmark, on a fixture in its official format, through the runner
    (LLaVA-1.5; MMBench's base64 images as bytes): results equal its scorer on the JSONL."""
    if name not in BENCHMARKS:
        pytest.skip(f"benchmark {name} is not registered")
    data = env.root / f"data_{name}"
    data.mkdir()
    REAL[name](data)
    path, _ = checkpoint(env, "llava")
    work = env.root / f"real_{name}"
    res = run_benchmark(
        path, name, data, workdir=work, methods=["none", "fastervlm"], keep=[0.5],
        batch_size=BATCH, timing_repeats=0, log=lambda s: None, split=SPLIT.get(name),
    )  # fmt: skip
    bench = BENCHMARKS[name]
    items = bench.read(data, split=SPLIT.get(name))
    for r in res["results"]:
        preds = dict(predictions(env, f"real_{name}", r["setting"]))
        assert set(preds) == {it.id for it in items}
        assert r["score"] == json.loads(json.dumps(bench.score(items, preds)))
        assert isinstance(r["main"], (int, float))
    assert (work / "results.csv").is_file()
