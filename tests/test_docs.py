"""The documentation site (docs/, Sphinx) builds with warnings as errors, has a page per public
module holding every public function and class, and renders in headless Chromium: the index, an
API page and a page of plots load with no console error, no failed request and every image
decoded. The docstring examples themselves run as tests through ``--doctest-modules``.

The browser test needs Chromium (Debian's ``chromium`` package) and the ``playwright`` Python
package; it is skipped without them unless ``PRUNEAX_REQUIRE_BROWSER=1`` (the README's test
command sets it after installing Chromium), where it fails instead.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import inspect
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = ("tokens", "weights", "ops", "graph", "models", "data", "lab")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    cmd += ["-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert built.returncode == 0, f"sphinx-build -W failed:\n{built.stderr[-6000:]}"
    return out / "html"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_and_class_has_its_entry(site, name):
    module = importlib.import_module(f"pruneax.{name}")
    page = (site / "api" / f"{name}.html").read_text()
    public = [
        n
        for n in module.__all__
        if inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n))
    ]
    assert public
    missing = [n for n in public if f'id="pruneax.{name}.{n}"' not in page]
    assert not missing, f"api/{name}.html lacks {missing}"


def test_guide_methods_and_reproductions_are_pages(site):
    index = (site / "index.html").read_text()
    for href in ("guide.html", "methods.html", "api/index.html", "reproductions/index.html"):
        assert f'href="{href}' in index, href
    for page in ("vit_token_pruning", "vlm_token_pruning", "lottery_tickets", "benchmarks"):
        assert (site / "reproductions" / f"{page}.html").is_file(), page


def _chromium() -> str | None:
    return (
        os.environ.get("PRUNEAX_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("PRUNEAX_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("PRUNEAX_REQUIRE_BROWSER=1 but the playwright package is missing")
        pytest.skip("playwright is not installed")
    executable = _chromium()
    if executable is None:
        if required:
            pytest.fail("PRUNEAX_REQUIRE_BROWSER=1 but no chromium executable was found")
        pytest.skip("no chromium executable (apt-get install chromium)")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=args)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


# page, text the rendered body must show, least number of decoded images
PAGES = [
    ("index.html", "Neural-network pruning in JAX", 0),
    ("api/tokens.html", "maxmin_diversity", 0),
    ("reproductions/vit_token_pruning.html", "Training-free accuracy", 3),
]


@pytest.mark.parametrize(("path", "text", "images"), PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_in_chromium(browser, server, tmp_path, path, text, images):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    # Chromium asks every server for /favicon.ico (the site has none): that 404 alone is not
    # a defect of the site; any other missing file shows up below by its address.
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and "favicon" not in str(m.location) else None)  # fmt: skip
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)  # fmt: skip
    response = page.goto(f"{server}/{path}", wait_until="load")
    assert response is not None and response.status == 200
    page.wait_for_load_state("networkidle")
    assert "pruneax" in page.title()
    assert text in page.inner_text("body")
    decoded = page.evaluate(
        "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    )
    total = page.evaluate("document.images.length")
    assert decoded == total and decoded >= images, (decoded, total)
    shot = tmp_path / (path.replace("/", "_") + ".png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    keep = os.environ.get("PRUNEAX_SCREENSHOTS")
    if keep:
        pathlib.Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, pathlib.Path(keep) / shot.name)
    page.close()
    assert not problems, problems
