"""The documents' promises: every Python snippet of README.md and docs/ runs, and every public name has a docstring.

Each page's ``python`` blocks run in order in one namespace (as a reader would paste them), in an
empty folder, against the built-in fake server: an ``OpenRouterBackend`` built without a
``base_url`` is pointed at it, and ``OPENROUTER_API_KEY`` holds a fake key. The namespace starts
with ``backend``, such a backend, for snippets that take one from the prose around them. A block
that cannot run offline is marked on the line before it with ``<!-- snippet: skip (why) -->``, and skipped.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from openrouter_sync import OpenRouterBackend
from openrouter_sync.testing import FakeOpenRouter

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
_SKIP = re.compile(r"<!--\s*snippet:\s*skip\b[^>]*-->\s*$")


def snippets(page: Path) -> list[tuple[int, str, bool]]:
    """``(line, code, skipped)`` for each ```` ```python ```` block of a page."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((line, match.group(1), bool(_SKIP.search(before))))
    return found


def test_the_pages_have_snippets() -> None:
    """The extraction itself works (a test that finds nothing cannot fail)."""
    counted = {str(page.relative_to(ROOT)): len(snippets(page)) for page in PAGES}
    assert counted["README.md"] >= 2 and counted["docs/batches.md"] >= 4 and counted["docs/testing.md"] >= 3
    assert any(skipped for page in PAGES for _, _, skipped in snippets(page))


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenRouter]:
    """The fake server, a fake key, a fresh folder and HOME; backends without ``base_url`` use the server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-docs-snippet-fake-key-0123456789")
    monkeypatch.delenv("OPENROUTER_SYNC_SHARED_STATE", raising=False)
    original = OpenRouterBackend.__init__
    with FakeOpenRouter(max_lifetime=120) as server:
        def init(self: OpenRouterBackend, *args: Any, **kwargs: Any) -> None:
            if len(args) < 6 and "base_url" not in kwargs:
                kwargs["base_url"] = server.base_url
            original(self, *args, **kwargs)

        monkeypatch.setattr(OpenRouterBackend, "__init__", init)
        yield server


@pytest.mark.socket
@pytest.mark.parametrize("page", [p for p in PAGES if snippets(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_run_offline(page: Path, offline: FakeOpenRouter) -> None:
    namespace: dict[str, Any] = {"__name__": f"snippets_of_{page.stem}"}
    namespace["backend"] = given = OpenRouterBackend(model="openai/gpt-4o-mini")
    ran = 0
    for line, code, skipped in snippets(page):
        if skipped:
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{page.relative_to(ROOT)}, the snippet at line {line} raised {type(exc).__name__}: {exc}")
        ran += 1
    given.close()
    assert ran, f"{page.name}: every snippet is skipped"


def _docstrings_module() -> Any:
    spec = importlib.util.spec_from_file_location("docs_docstrings", ROOT / "docs" / "_hooks" / "docstrings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring() -> None:
    """The check ``mkdocs build --strict`` runs (docs/_hooks/hooks.py), also in the test suite."""
    assert _docstrings_module().undocumented() == []


def test_the_docstring_check_sees_a_missing_docstring(monkeypatch: pytest.MonkeyPatch) -> None:
    import openrouter_sync

    def undocumented_helper() -> None:
        pass

    monkeypatch.setattr(openrouter_sync, "undocumented_helper", undocumented_helper, raising=False)
    monkeypatch.setattr(openrouter_sync, "__all__", [*openrouter_sync.__all__, "undocumented_helper"])
    assert _docstrings_module().undocumented() == ["openrouter_sync.undocumented_helper"]
