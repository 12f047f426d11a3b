"""Open leaderboard.html in headless Chromium, read a table value back, and save a screenshot for the docs.

    forgetbench leaderboard && python bench/leaderboard_screenshot.py [--html leaderboard.html] [--out docs/leaderboard.png]

Checks that the page renders (its script ran) and that the first row of the first table, as the browser shows it,
is the first row of the same table in leaderboard.md; then writes the screenshot. Needs Chromium (Debian:
``apt-get install chromium``). Run by hand; the test suite does the same on small synthetic data (tests/test_html.py).
"""
from __future__ import annotations

import argparse
import sys
from html.parser import HTMLParser
from pathlib import Path

from forgetbench.report.browser import dump_dom, screenshot


class FirstTable(HTMLParser):
    """Cell texts of the first table, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell, self.tables = [], None, 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        elif self.tables == 1 and tag == "tr":
            self.rows.append([])
        elif self.tables == 1 and tag in ("td", "th"):
            self.cell = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None


def markdown_first_table(md: str) -> list[list[str]]:
    rows, started = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return [rows[0], *rows[2:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", default="leaderboard.html")
    ap.add_argument("--markdown", default="leaderboard.md")
    ap.add_argument("--out", default="docs/leaderboard.png")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1150)
    args = ap.parse_args()
    dom = dump_dom(args.html)
    if 'data-script="ran"' not in dom:
        print(f"{args.html}: the page's script did not run", file=sys.stderr)
        return 1
    parser = FirstTable()
    parser.feed(dom)
    shown, expected = parser.rows, markdown_first_table(Path(args.markdown).read_text(encoding="utf-8"))
    if shown[:2] != expected[:2]:
        print(f"the browser shows {shown[:2]}, {args.markdown} has {expected[:2]}", file=sys.stderr)
        return 1
    header, first = shown[0], shown[1]
    print("read back from the rendered page: " + ", ".join(f"{h} {v}" for h, v in zip(header, first) if v))
    print(f"wrote {screenshot(args.html, args.out, args.width, args.height)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
