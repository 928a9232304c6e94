"""Sphinx configuration of the artifactstore documentation site (built by ``nox -s docs``, warnings as errors).

Pages are MyST markdown, so they read the same on the code host. The CLI reference, the configuration
reference and the API reference are generated from the code at build time. Nothing is fetched from the
network while building (no intersphinx): links to other projects are plain links.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "artifactstore"
author = "the artifactstore developers"
copyright = "the artifactstore developers"
release = metadata.version("artifactstore-core")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "artifactstore_docs",
]

root_doc = "index"
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext", "README.md", ".DS_Store"]
templates_path: list[str] = []

# Every cross-reference must resolve (pages, headings, environment variables), except references into
# Python objects: docstrings name classes of other projects, which are not fetched (no intersphinx).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r".*")]

# -- MyST ---------------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
# `[text](page.md#a-heading)` links resolve to the heading's anchor, as on the code host.
myst_heading_anchors = 3

# -- autodoc ------------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- HTML ---------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"artifactstore {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
