"""mkdocs hooks of the openrouter-sync site (``hooks:`` in mkdocs.yml).

- ``<!-- include: FILE -->`` in a page is replaced by that file of the repository's root
  (CHANGELOG.md, BENCHMARKS.md), its links to other root files pointed at their pages;
- ``<!-- cli-help: COMMAND -->`` is replaced by ``openrouter-sync COMMAND --help`` as the
  installed command prints it, so the site's option lists never drift from the code;
- docs/rate-limits.md (written apart from the rest of the site) is given a placeholder page
  when it is missing, so a build never breaks on it;
- every public name without a docstring is a warning, which ``mkdocs build --strict`` turns
  into a failed build.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the package of this checkout, also when it is not installed
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from docstrings import undocumented  # noqa: E402

log = logging.getLogger("mkdocs.hooks.openrouter_sync")

#: Root files and the site pages that stand for them.
_PAGES = {"README.md": "index.md", "BENCHMARKS.md": "benchmarks.md", "CHANGELOG.md": "changelog.md"}
_INCLUDE = re.compile(r"<!--\s*include:\s*(\S+)\s*-->")
_CLI_HELP = re.compile(r"<!--\s*cli-help:\s*(\S*)\s*-->")
_RATE_LIMITS_PLACEHOLDER = """# Rate limits

This page (docs/rate-limits.md) is written apart from the rest of the site and was missing when
this copy was built. See [Retries](retries.md) and [Many processes](processes.md).
"""


def on_config(config: Any) -> Any:
    """Warn (a failed strict build) for every public name without a docstring."""
    for name in undocumented():
        log.warning("public name without a docstring: %s", name)
    return config


def on_files(files: Any, config: Any) -> Any:
    """A placeholder docs/rate-limits.md when it is missing."""
    from mkdocs.structure.files import File

    if files.get_file_from_path("rate-limits.md") is None:
        files.append(File.generated(config, "rate-limits.md", content=_RATE_LIMITS_PLACEHOLDER))
    return files


def _root_links(markdown: str) -> str:
    """Links from a root file to another root file (or into docs/) as links between site pages."""
    for name, page in _PAGES.items():
        markdown = re.sub(rf"\]\((?:\.\./)?{re.escape(name)}(#[^)]*)?\)", rf"]({page}\1)", markdown)
    return re.sub(r"\]\(docs/", "](", markdown)


def _cli_help(command: str) -> str:
    from openrouter_sync.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([*command.split(), "--help"])
    return "```text\n" + out.getvalue().rstrip() + "\n```"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand the include and cli-help markers."""

    def include(match: re.Match[str]) -> str:
        path = ROOT / match.group(1)
        if not path.is_file():
            log.warning("%s: include of a missing file %s", page.file.src_path, match.group(1))
            return ""
        text = path.read_text(encoding="utf-8")
        return _root_links(text)

    markdown = _INCLUDE.sub(include, markdown)
    return _CLI_HELP.sub(lambda m: _cli_help(m.group(1)), markdown)
