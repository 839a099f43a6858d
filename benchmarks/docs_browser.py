"""The built docs site in a real headless browser: every page of build/site (`make docs`) is served
over local HTTP and opened in Chromium; a page fails when an image did not load (naturalWidth 0),
a request failed or returned >= 400, the page raised a console error, or one of its links points to
a page or anchor that the site does not have. Screenshots of a few pages go to OUT. Not part of
`make test` (it needs a browser):

    apt-get install -y chromium && pip install -e '.[browser]'   # playwright, driving the system's Chromium
    make docs && python benchmarks/docs_browser.py --out /tmp/docs_check [--site build/site]

It prints one line per page with a problem and a JSON summary (also OUT/docs_check.json); exit
status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urldefrag, urlparse

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ("", "quickstart/", "results/", "reference/config/", "tutorials/own-images/")  # pages photographed


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def pages(site: Path) -> list[str]:
    """Every page's path relative to the site root ('' for the home page, 'results/', ...)."""
    out = []
    for f in sorted(site.rglob("index.html")):
        rel = f.parent.relative_to(site).as_posix()
        if rel.startswith(("assets", "search")):
            continue
        out.append("" if rel == "." else rel + "/")
    return out


def check(site: Path, chromium: str, out: Path) -> dict:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("playwright is not installed: pip install -e '.[browser]' (it drives the system's chromium)")
    server, base = serve(site)
    anchors: dict[str, set[str]] = {}  # page -> its element ids
    links: list[tuple[str, str]] = []  # (page, href) of same-site links
    report: dict[str, dict] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for rel in pages(site):
            console, failed = [], []
            page.on("console", lambda m, c=console: c.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, c=console: c.append(str(e)))
            page.on("requestfailed", lambda r, f=failed: f.append(f"{r.url}: {r.failure}"))
            page.on("response", lambda r, f=failed: f.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)
            page.goto(base + rel, wait_until="networkidle")
            imgs = page.eval_on_selector_all("img", "els => els.map(i => [i.getAttribute('src'), i.naturalWidth])")
            anchors[rel] = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(a => a.href)")
            links += [(rel, h) for h in hrefs if h.startswith(base)]
            if rel in SHOTS:
                page.screenshot(path=str(out / f"{(rel.strip('/') or 'index').replace('/', '_')}.png"), full_page=True)
            report[rel] = {"images": len(imgs), "images_broken": [s for s, w in imgs if not w],
                           "console_errors": console, "requests_failed": failed}
            page.close()
            page = browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()
    server.shutdown()
    broken = []
    for rel, href in links:
        url, frag = urldefrag(href)
        path = urlparse(url).path.lstrip("/")
        target = site / path
        if path and not path.endswith("/") and target.is_dir():
            path += "/"
        if not (site / path).exists() and not (site / path / "index.html").exists():
            broken.append(f"{rel or '/'} -> {href} (no such file)")
        elif frag and path in anchors and frag not in anchors[path]:
            broken.append(f"{rel or '/'} -> {href} (no such anchor)")
    return {"pages": report, "broken_links": sorted(set(broken)), "links_checked": len(links)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", type=Path, default=ROOT / "build" / "site", help="the built site (make docs)")
    p.add_argument("--out", type=Path, required=True, help="folder for the screenshots and docs_check.json")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "",
                   help="the browser executable (default: chromium on PATH)")
    args = p.parse_args()
    if not args.chromium:
        p.error("no chromium on PATH: apt-get install -y chromium (or pass --chromium PATH)")
    if not (args.site / "index.html").is_file():
        p.error(f"no site at {args.site}: run `make docs` first")
    args.out.mkdir(parents=True, exist_ok=True)
    seen = check(args.site, args.chromium, args.out)
    bad = 0
    for rel, r in seen["pages"].items():
        problems = r["images_broken"] + r["console_errors"] + r["requests_failed"]
        if problems:
            bad += 1
            print(f"FAIL /{rel}: {problems}")
    for b in seen["broken_links"]:
        print(f"FAIL broken link: {b}")
    summary = {"pages": len(seen["pages"]), "pages_with_problems": bad,
               "images": sum(r["images"] for r in seen["pages"].values()),
               "links_checked": seen["links_checked"], "broken_links": len(seen["broken_links"]),
               "screenshots": sorted(p.name for p in args.out.glob("*.png"))}
    (args.out / "docs_check.json").write_text(json.dumps({**summary, "detail": seen}, indent=2, default=list))
    print(json.dumps(summary, indent=2))
    return 1 if bad or seen["broken_links"] else 0


if __name__ == "__main__":
    sys.exit(main())
