"""The `mocolab report` page in a real headless browser: it writes the report of the given run
folders, opens index.html from disk (file://) in Chromium, takes a full-page screenshot and
checks that every image loaded (naturalWidth > 0), that no request failed and that the page
raised no console error. Not part of `make test` (it needs a browser):

    apt-get install -y chromium && pip install -e '.[browser]'   # playwright, driving the system's Chromium
    python benchmarks/report_browser.py RUN_DIR [RUN_DIR ...] --out /tmp/report [--data DIR] [--limit 2000] \
        [other `mocolab report` options]
    python benchmarks/report_browser.py --page /tmp/report      # check a report already written

It prints one line per check and a JSON summary (also OUT/browser_check.json); exit status 1 when
a check fails. The screenshot is OUT/screenshot.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_report(args) -> None:
    cmd = [sys.executable, "-m", "mocolab", "report", *args.runs, "--out", str(args.out)]
    if args.data:
        cmd += ["--data", args.data]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    cmd += args.report_args
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    print(f"report written in {time.perf_counter() - t0:.0f} s", flush=True)


def check_page(folder: Path, chromium: str, screenshot: Path) -> dict:
    """Opens folder/index.html in headless Chromium -> what was seen."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("playwright is not installed: pip install -e '.[browser]' (it drives the system's chromium)")

    index = (folder / "index.html").resolve()
    console, page_errors, failed = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: console.append({"type": m.type, "text": m.text}))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
        page.goto(index.as_uri(), wait_until="load")
        images = page.evaluate("""() => Array.from(document.images).map(i => ({
            src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))""")
        title = page.title()
        headings = page.evaluate("() => Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        captions = page.evaluate("() => Array.from(document.querySelectorAll('figure')).map(f => "
                                 "!!f.querySelector('figcaption') && f.querySelector('figcaption').textContent.length)")
        page.screenshot(path=str(screenshot), full_page=True)
        version = browser.version
        browser.close()
    errors = [c for c in console if c["type"] == "error"]
    broken = [i for i in images if not i["complete"] or i["width"] <= 0]
    return {"page": str(index), "browser": f"Chromium {version}", "title": title, "sections": headings,
            "images": len(images), "images_broken": broken, "figures_without_caption": captions.count(False)
            + captions.count(0), "console_errors": errors, "page_errors": page_errors, "requests_failed": failed,
            "console_messages": len(console), "screenshot": str(screenshot)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run, sweep or compare folders for `mocolab report`")
    p.add_argument("--out", type=Path, help="the report folder to write")
    p.add_argument("--page", type=Path, help="check this report folder (already written) instead")
    p.add_argument("--data")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "",
                   help="the browser executable (default: chromium on PATH)")
    args, args.report_args = p.parse_known_args()  # other options go to `mocolab report` (--map-points 500)
    if not args.chromium:
        p.error("no chromium on PATH: apt-get install -y chromium (or pass --chromium PATH)")
    if args.page:
        folder = args.page
    elif args.runs and args.out:
        write_report(args)
        folder = args.out
    else:
        p.error("give RUN_DIR... --out DIR, or --page DIR")
    seen = check_page(folder, args.chromium, folder / "screenshot.png")
    checks = [("every image loaded (naturalWidth > 0)", seen["images"] > 0 and not seen["images_broken"]),
              ("no console error", not seen["console_errors"]),
              ("no uncaught page error", not seen["page_errors"]),
              ("no failed request", not seen["requests_failed"]),
              ("every figure has a caption", seen["figures_without_caption"] == 0)]
    for what, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    seen["passed"] = all(ok for _, ok in checks)
    (folder / "browser_check.json").write_text(json.dumps(seen, indent=2))
    print(json.dumps({k: v for k, v in seen.items() if k != "sections"}, indent=2))
    return 0 if seen["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
