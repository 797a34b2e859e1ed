"""Which public names of openrouter_sync have no docstring (used by the mkdocs hook and a test)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Iterator

#: The modules whose ``__all__`` is the public API the site documents.
PUBLIC_MODULES = ("openrouter_sync", "openrouter_sync.testing")


def _own_doc(obj: Any) -> str:
    doc = obj.__doc__ if isinstance(obj, type) else inspect.getdoc(obj)
    if not doc:
        return ""
    if isinstance(obj, type) and doc.startswith(obj.__name__ + "("):  # the signature a dataclass made up
        return ""
    return doc.strip()


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            yield name, value


def undocumented() -> list[str]:
    """Every public name (and public method or property of a public class) without a docstring."""
    missing: list[str] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if not _own_doc(module):
            missing.append(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants and version strings
            where = f"{module_name}.{name}"
            if not _own_doc(obj):
                missing.append(where)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                missing += [f"{where}.{member}" for member, value in _members(obj) if not _own_doc(value)]
    return sorted(set(missing))


if __name__ == "__main__":
    for name in undocumented():
        print(name)
