"""A griffe extension: the docstrings' few reStructuredText habits, as Markdown.

``:meth:`name``` and its kin become ``name``; a paragraph ending in ``::`` (a literal block
follows, indented, which Markdown already reads as code) ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:meth|attr|class|func|mod|data|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"::\n")


class RstRoles(griffe.Extension):
    """Rewrites every docstring once, as griffe loads it."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place."""
        docstring = obj.docstring
        if docstring is not None:
            docstring.value = _LITERAL.sub(":\n", _ROLE.sub(r"`\1`", docstring.value))
