"""The HTML leaderboard: the same data as leaderboard.md, self-contained, sortable; checked in headless Chromium."""
from __future__ import annotations

import random
import re
from html.parser import HTMLParser

import pytest
from matplotlib.figure import Figure

from forgetbench.cli import main
from forgetbench.report.browser import dump_dom, find_chromium
from forgetbench.report.html import render_leaderboard_html
from forgetbench.report.leaderboard import render_leaderboard
from forgetbench.records import parse_record, run_id

from pipeline_helpers import RESULT_SCHEMA, summary_of

from needs import missing

SPEC = {"seeds": [0, 1, 2]}  # the task asks for three seeds


def rec(method, seed, dlps, params=None, acc=80.0):
    params = params or {}
    heldout = {f"mini/h{i}": {"lp": 50.0 + d, "lp_reference": 50.0, "delta_lp": d, "drift": {"l2": 0.1 * (i + 1)}}
               for i, d in enumerate(dlps)}
    return parse_record({
        "schema": RESULT_SCHEMA, "run_id": run_id("mini-x", 1, method, params, seed), "status": "complete",
        "task": {"name": "mini-x", "version": 1, "spec": SPEC},
        "method": {"name": method, "params": params, "reference": f"<{method}> et al. & co"},
        "seed": seed, "model": {"name": "mini-clip", "weights_sha256": None},
        "metrics": {"target": {"dataset": "mini/shapes", "acc": acc, "acc_reference": 60.0, "gain": acc - 60.0},
                    "heldout": heldout, "summary": summary_of(heldout)},
        "timings": {"finetune_s": 1.0, "evaluate_s": 1.0, "total_s": 2.0}, "provenance": {},
    })


RUNS = [rec("ft", s, [-4.0 - s, -2.0]) for s in range(3)] + \
       [rec("l2sp", s, [-1.0, -0.5 * s], params={"alpha": 0.5}) for s in range(3)] + \
       [rec("new-method", 0, [-2.5, -2.5])]  # one seed of three: marked


class Tables(HTMLParser):
    """Collects every table as rows of cell texts (header row first), with each cell's attributes."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell, self.attrs = [], None, {}
        self.images, self.links, self.scripts_src = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"attrs": a, "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self.cell, self.attrs = "", a
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "script" and "src" in a:
            self.scripts_src.append(a["src"])

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1]["rows"][-1].append((self.cell.strip(), self.attrs))
            self.cell = None


def parse(text):
    p = Tables()
    p.feed(text)
    return p


def md_rows(md):
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1]


def test_html_tables_hold_exactly_the_markdown_cells():
    md = render_leaderboard(RUNS)
    page = parse(render_leaderboard_html(RUNS))
    html_rows = [[text for text, _ in row] for row in page.tables[0]["rows"]]
    assert html_rows == md_rows(md)
    by_method = {r[1]: r for r in html_rows[1:]}
    assert by_method["new-method"][3] == "1 †" and by_method["ft"][3] == "3"
    assert "† fewer seeds than the task's 3" in md


def test_few_seed_rows_are_marked_and_cells_carry_sort_values():
    page = parse(render_leaderboard_html(RUNS))
    header = [attrs["data-key"] for _, attrs in page.tables[0]["rows"][0]]
    assert header[:5] == ["rank", "method", "params", "seeds", "acc"] and "delta_lp_mean" in header
    col = header.index("delta_lp_mean")
    for row in page.tables[0]["rows"][1:]:
        text, attrs = row[col]
        assert float(attrs["data-sort"]) == pytest.approx(float(text.split(" ± ")[0]), abs=0.005)
    html = render_leaderboard_html(RUNS)
    assert html.count('class="few-seeds"') == 1


def test_page_is_self_contained_escaped_and_deterministic(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(figures / "mini-x-correlation.png")
    (figures / "mini-x-correlation.md").write_text("# Forgetting vs drift\n\nA note.\n\n| drift | r |\n|---|---|\n| l2 | -0.5 |\n")
    html = render_leaderboard_html(RUNS, figures)
    page = parse(html)
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    assert not page.scripts_src and not page.links  # styles and script inline; nothing fetched
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(|@import""", html)
    assert "&lt;ft&gt; et al. &amp; co" in html and "<ft>" not in html  # record text is escaped
    assert [[t for t, _ in r] for r in page.tables[1]["rows"]] == [["drift", "r"], ["l2", "-0.5"]]
    shuffled = RUNS[:]
    random.Random(1).shuffle(shuffled)
    assert render_leaderboard_html(shuffled, figures) == html


def test_cli_writes_markdown_and_html_beside_it(tmp_path, capsys):
    from forgetbench.records import ResultStore

    store = ResultStore(tmp_path / "results")
    for r in RUNS:
        store.append(r)
    out = tmp_path / "board" / "leaderboard.md"
    assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_leaderboard(RUNS)
    assert (out.parent / "leaderboard.html").read_text(encoding="utf-8") == render_leaderboard_html(RUNS)
    assert sorted(p.name for p in out.parent.iterdir()) == ["leaderboard.html", "leaderboard.md"]


@pytest.mark.browser
def test_chromium_renders_the_page_and_sorts_it(tmp_path):
    """Chromium's own --dump-dom, as bench/leaderboard_screenshot.py uses it (no Playwright)."""
    if find_chromium() is None:
        missing("browser", "headless Chromium is not installed (Debian: apt-get install chromium)")
    path = tmp_path / "leaderboard.html"
    path.write_text(render_leaderboard_html(RUNS), encoding="utf-8")
    md = md_rows(render_leaderboard(RUNS))
    col = md[0].index("ΔLP")

    dom = parse(dump_dom(path))
    rows = [[t for t, _ in r] for r in dom.tables[0]["rows"]]
    assert rows == md  # as ranked: best ΔLP first, values read back from the rendered page
    assert rows[1][1] == "l2sp" and rows[1][col] == md[1][col]

    raw = dump_dom(path, fragment="sort=delta_lp_mean:asc")  # the page's script sorts on load
    assert 'data-script="ran"' in raw
    dom = parse(raw)
    assert dom.tables[0]["attrs"]["data-sorted-by"] == "delta_lp_mean:asc"
    rows = [[t for t, _ in r] for r in dom.tables[0]["rows"]]
    assert [r[1] for r in rows[1:]] == ["ft", "new-method", "l2sp"]  # most forgetting first
    assert rows[1][col] == next(r[col] for r in md if r[1] == "ft")
