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

# Every cross-reference must resolve: pages, headings, environment variables and Python objects (the
# `docs` nox session passes -n as well). A docstring names a documented object by the path the API
# reference documents it under (errors under ``artifactstore_core.errors``, the rest mostly where users
# import it from), e.g. :class:`~artifactstore_core.errors.StoreClosedError`. Only the targets below are
# exempt; add to them only for names that cannot be documented here.
nitpicky = True
nitpick_ignore = [
    # Annotations autodoc could not evaluate stay as written, unqualified: pydantic-settings' BaseSettings
    # (imported only under TYPE_CHECKING in artifactstore_core.registry) and importlib.metadata's EntryPoint.
    ("py:class", "BaseSettings"),
    ("py:class", "metadata.EntryPoint"),
]
nitpick_ignore_regex = [
    # The standard library and third-party projects: their inventories would come from intersphinx, which
    # needs the network, and the docs build offline. Bases, annotations and docstrings name them.
    (
        r"py:.*",
        r"(abc|collections|concurrent|contextlib|contextvars|datetime|enum|functools|importlib|io|os|pathlib|subprocess|types|typing)\..*",
    ),
    (
        r"py:.*",
        r"(pydantic|pydantic_core|pydantic_settings|starlette|uvicorn|httpx|redis|boto3|botocore|pluggy|click|blake3)\..*",
    ),
    # boto3-stubs' client type, named in annotations of the s3 test launcher (a typing-only package).
    (r"py:class", r"S3Client"),
    # Type variables of generic signatures (``T``, ``S``, ``Model``): nothing to document.
    (r"py:class", r"artifactstore_\w+(\.\w+)*\.(T|S|Model)"),
    # Private names (a leading underscore) shown as bases, e.g. the settings' shared base ``_Settings``.
    (r"py:class", r"artifactstore_\w+(\.\w+)*\._\w+"),
    # Internal modules of the s3 backend named in S3Store's docstring; they are not part of the API.
    (r"py:mod", r"artifactstore_s3\.(keys|layout)"),
]

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
