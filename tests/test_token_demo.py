"""Smoke test of pruneax.experiments.token_demo: the tiny preset end to end, and its CLI."""

import json

import numpy as np
import pytest
from PIL import Image

import pruneax.tokens as T
from pruneax.experiments import token_demo

# Public names of pruneax.tokens that are not single-example selectors (scorers, ops, helpers,
# the registry). A new public name fails test_every_selector_is_registered until it is sorted
# into one group.
NOT_SELECTORS = {
    "INPUTS",
    "METHODS",
    "Method",
    "get_method",
    "register",
    "select_tokens",
    "unregister",
    "budget",
    "cls_attention",
    "contextual_merge",
    "dominant_contextual",
    "coverage_matrix",
    "fuse_pruned",
    # FlowCut runs across blocks (PruningPlan.flowcut / VisualSelect("flowcut")), not through
    # the one-block registry
    "flowcut_prune_count",
    "flowcut_scores",
    "flowcut_select",
    "flowcut_step",
    # FoPru needs the patch-to-patch attention matrix, which no registry input carries
    # (VisualSelect("fopru") computes it at the feature block)
    "focal_select",
    "focal_significance",
    "gather",
    "hiprune_anchors",
    "holov_chunks",
    "keep_mask",
    "last_query_attention",
    "query_key_attention",
    "received_attention",
    "tome_merge",
    "uniform_grid",
    "unprotected_positions",
    "with_protected",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("token_demo")
    config = token_demo.PRESETS["tiny"]
    returned = token_demo.run(config, workdir)
    return config, workdir, returned


# Selector function -> its registry name, where they differ.
REGISTERED_AS = {"maxmin_diversity": "divprune", "maxsum_diversity": "maxsum"}


def test_every_selector_is_registered():
    selectors = set(T.__all__) - NOT_SELECTORS
    assert {REGISTERED_AS.get(n, n) for n in selectors} == set(T.METHODS)


def test_every_selector_is_in_the_demo():
    """Every method of the registry is in the demo (and nothing else)."""
    assert set(T.METHODS) == set(token_demo.METHODS)


def test_png_is_a_plausible_image(tiny):
    config, workdir, _ = tiny
    path = workdir / "token_demo.png"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        width, height = im.size
    cols, rows = len(token_demo.METHODS), config.num_images
    assert width >= 100 * cols and height >= 100 * rows
    assert width > height  # 9 method columns, 2 image rows


def test_results_json_has_k_unique_sorted_indices_per_method(tiny):
    config, workdir, returned = tiny
    results = json.loads((workdir / "results.json").read_text())
    assert results == json.loads(json.dumps(returned))
    n, k = results["n"], results["k"]
    assert n == (config.size // config.patch) ** 2
    assert k == T.budget(n, config.keep)
    assert results["config"]["num_images"] == config.num_images == len(results["labels"])
    assert len(set(results["labels"])) == config.num_images  # different classes
    assert list(results["methods"]) == list(token_demo.METHODS)
    for name, m in results["methods"].items():
        idx = np.asarray(m["indices"])
        assert idx.shape == (config.num_images, k), name
        for row in idx:
            assert np.all(np.diff(row) > 0), (name, row)  # sorted and unique
            assert 0 <= row[0] and row[-1] < n, (name, row)


def test_statistics_order_methods_as_expected(tiny):
    _, _, results = tiny
    m = results["methods"]
    mass = {name: np.asarray(v["score_mass"]) for name, v in m.items()}
    dist = {name: np.asarray(v["mean_dist"]) for name, v in m.items()}
    # topk maximises kept score mass by definition, per image.
    for name, v in mass.items():
        assert np.all(mass["topk"] >= v - 1e-6), name
    assert np.all(mass["topk"] > 0.5) and np.all(mass["random"] < 0.5)
    # topk keeps only digit patches (the digits cover more than k patches); random does not.
    assert np.all(np.asarray(m["topk"]["on_digit"]) == 1.0)
    assert np.all(np.asarray(m["random"]["on_digit"]) < 1.0)
    # k-center spreads over the image; topk clusters on the digit. Checked on 40 digits at keep
    # 0.1 / 0.25 / 0.5 and sizes 32 / 48: kcenter always lower, by at least 0.09 patch widths.
    assert np.all(dist["kcenter"] < dist["topk"])


def test_parse_args_applies_preset_then_flags():
    config, workdir = token_demo.parse_args(
        ["--workdir", "out", "--preset", "tiny", "--num_images", "3", "--keep", "0.5"]
    )
    assert workdir == "out"
    assert config == token_demo.Config(num_images=3, size=32, keep=0.5)
    assert token_demo.parse_args(["--workdir", "d"])[0] == token_demo.PRESETS["default"]
