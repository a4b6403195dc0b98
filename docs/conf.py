"""Sphinx configuration of the API reference (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "dataflow"
author = "the dataflow authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # fields of named tuples are documented once, by autodoc
napoleon_preprocess_types = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = True
# Type hints name optional packages and numpy's and networkx's types; none of them
# needs resolving to build the reference.
nitpicky = False
intersphinx_mapping = {}
html_theme = "alabaster"
html_static_path = []
exclude_patterns = ["_build"]
