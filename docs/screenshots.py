"""Build the site and take headless Chromium screenshots of a few pages (not part of CI).

    python docs/screenshots.py [--out DIR] [--chromium PATH] [--width 1280] [--height 1600] [PAGE ...]

Needs the ``docs`` extra (``pip install ".[docs]"``) and Chromium (Debian: ``apt-get install -y
chromium``). The site is built with ``mkdocs build --strict`` into a temporary folder, served on
127.0.0.1 at a free port for the length of the run, and each page is shot with a new, empty
profile. PAGE is a path of the site (default: the home page, the batches guide and the
reference of ``OpenRouterBackend``). Prints the PNGs' paths.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("", "batches/", "reference/backend/")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the built site without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def find_chromium(explicit: str | None) -> str:
    """The Chromium to run: ``explicit``, else the first of chromium / chromium-browser / google-chrome on PATH."""
    for name in ([explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: apt-get install -y chromium (or pass --chromium PATH)")


def build(site: Path) -> None:
    """``mkdocs build --strict`` of this checkout into ``site``."""
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                   cwd=ROOT, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def shoot(chromium: str, url: str, png: Path, width: int, height: int) -> None:
    """One screenshot of ``url`` into ``png``, with a profile of its own."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=3000", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", default=list(PAGES), help="site paths (default: %(default)s)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "openrouter-sync-screenshots"))
    parser.add_argument("--chromium")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="openrouter-sync-site-") as folder:
        site = Path(folder) / "site"
        build(site)
        handler = functools.partial(_QuietHandler, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            for page in args.pages:
                name = page.strip("/").replace("/", "-") or "home"
                png = out / f"{name}.png"
                shoot(chromium, f"http://127.0.0.1:{server.server_address[1]}/{page}", png, args.width, args.height)
                print(png)
        finally:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
