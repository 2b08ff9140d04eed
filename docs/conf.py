"""Sphinx configuration: `make docs` builds docs/_build/html with warnings as errors."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

project = "pyro-vae"
author = "the pyro-vae developers"
copyright = "2026, the pyro-vae developers"

extensions = [
    "myst_nb",  # Markdown pages and the tutorials' notebooks, rendered with their outputs
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into the site: maths render with no network
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "examples", "tutorials/*.py", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "pyro-vae"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# The tutorials are executed by `make tutorials` (their outputs are committed) and by the
# test suite at a quick size; the docs build renders them as they are.
nb_execution_mode = "off"
nb_merge_streams = True  # an epoch's line a box of its own reads badly: one box per stream
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

