"""Sphinx configuration of the pruneax site: API reference from the docstrings, guide, methods,
reproduction results. Build: ``sphinx-build -W -b html docs docs/_build/html``."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "pruneax"
author = "the pruneax authors"
copyright = "2026, the pruneax authors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",  # the API pages from the docstrings
    "sphinx.ext.napoleon",  # Google-style Args: / Returns: sections
    "sphinx.ext.viewcode",
    "myst_parser",  # Markdown pages (the experiment reports are Markdown)
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# The experiment reports (docs/*.md) are written by the experiments; the results pages include
# them, so they are not pages themselves.
exclude_patterns = ["_build", "*_mnist.md", "*_cifar.md", "*_resnet.md", "*_benchmark.md"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each field

html_theme = "furo"
html_title = "pruneax"
html_static_path: list[str] = []
