"""The leaderboard and audit pages in a real browser (headless Chromium driven by Playwright): clicking a column title
sorts the table, every figure renders at its own size, and nothing is requested from the network. A screenshot of
each page is saved for a person to look at (listed at the end of the test run).

Playwright drives the system's Chromium (Debian: apt-get install chromium); it never downloads a browser.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from forgetbench.cli import main
from forgetbench.report.matched import INTERVAL
from forgetbench.report.browser import FLAGS, find_chromium, page_url
from forgetbench.report.html import _slug, page, table
from forgetbench.report.leaderboard import leaderboard_boards
from forgetbench.records import ResultStore
from forgetbench.run import run_one, weights_path

from needs import missing
from pipeline_helpers import tiny_task

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("browser", "Playwright is not installed (pip install -e '.[test]')")
    path = find_chromium()
    if path is None:
        missing("browser", "headless Chromium is not installed (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        # launch() gives every browser a new, empty profile; Playwright adds the headless flag itself
        browser = p.chromium.launch(executable_path=path, args=[f for f in FLAGS if f != "--headless"])
        yield browser
        browser.close()


class Visit:
    """One page in a fresh browser context whose network is cut: every request that is not for a local file (or a
    data: URI) is recorded and aborted."""

    def __init__(self, browser, path: Path, width: int = 1400, height: int = 1000):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.requested: list[str] = []
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda request: self.requested.append(request.url))
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(page_url(path))
        self.page.wait_for_selector("body[data-script=ran]", timeout=30_000)  # the page's script ran

    def _route(self, route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def rows(self, table_id: str, part: str = "tbody") -> list[list[str]]:
        return self.page.eval_on_selector_all(f"#{table_id} > {part} > tr", "trs => trs.map(tr => "
                                              "Array.from(tr.cells, td => td.textContent.trim()))")

    def click_header(self, table_id: str, title: str) -> None:
        self.page.locator(f"#{table_id} > thead th", has_text=title).first.click()

    def sort_state(self, table_id: str) -> tuple[str | None, list[str | None]]:
        """(the table's data-sorted-by, each column title's aria-sort)"""
        return tuple(self.page.eval_on_selector(f"#{table_id}", "t => [t.getAttribute('data-sorted-by'), "
                                          "Array.from(t.tHead.rows[0].cells, th => th.getAttribute('aria-sort'))]"))

    def images(self) -> list[dict]:
        return self.page.eval_on_selector_all("img", "imgs => imgs.map(i => ({alt: i.alt, complete: i.complete, "
                                              "natural: [i.naturalWidth, i.naturalHeight], "
                                              "shown: [i.getBoundingClientRect().width, "
                                              "i.getBoundingClientRect().height]}))")

    def assert_offline(self) -> None:
        assert self.outside == [], f"the page asked the network for {self.outside}"
        assert all(url.startswith(LOCAL_SCHEMES) for url in self.requested), self.requested
        assert self.errors == [], f"script errors: {self.errors}"

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """From the top of the page: the viewport, or the whole page."""
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(chromium):
    opened = []

    def open_page(path: Path, **kwargs) -> Visit:
        opened.append(Visit(chromium, path, **kwargs))
        return opened[-1]

    yield open_page
    for v in opened:
        v.close()


def png_size(path: Path) -> list[int]:
    """Width and height from the PNG header (the IHDR chunk), as the file says, not as a decoder does."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return list(struct.unpack(">II", data[16:24]))


def assert_not_blank(png: Path, width: int, height: int | None = None) -> None:
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[1] == width and pixels.shape[0] == (height or pixels.shape[0]) > 0
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # text, lines, figures: not one colour


# ------------------------------------------------------------------------------------------------ the network guard

def test_the_network_guard_sees_and_stops_a_request_to_outside(visit, tmp_path):
    """The check the page tests rely on: a page that does load something from outside is caught."""
    path = tmp_path / "leaky.html"
    path.write_text(page("leaky", '<img alt="x" src="http://forgetbench.invalid/pixel.png">'), encoding="utf-8")
    v = visit(path)
    v.page.wait_for_function("document.images[0].complete")
    assert v.outside == ["http://forgetbench.invalid/pixel.png"]
    assert v.images()[0]["natural"] == [0, 0]  # aborted: nothing to draw
    with pytest.raises(AssertionError, match="asked the network"):
        v.assert_offline()


# ------------------------------------------------------------------------------------------------ the sort script

SORT_CASES = [  # (label, the cell's text, its data-sort value if it has one)
    ("a", "10.00", None), ("b", "9.50", None), ("c", "+5.00", None), ("d", "\u22123.25", None), ("e", "–", None),
    ("f", "-12.5 [-13, -12]", None), ("g", "0.5", None), ("h", "", None), ("i", "n/a", float("-inf")),
]


def test_the_sort_script_orders_numbers_as_numbers_and_keeps_the_summary_row_last(visit, tmp_path):
    rows = [{"Label": label, "Value": shown} for label, shown, _ in SORT_CASES]
    keys = [{"Value": key} if key is not None else {} for _, _, key in SORT_CASES]
    body = table(["Label", "Value"], rows, keys, numeric={"Value"}, table_id="t",
                 footer=[{"Label": "mean", "Value": "1.00"}])
    path = tmp_path / "sort.html"
    path.write_text(page("sort", body), encoding="utf-8")
    v = visit(path)
    v.click_header("t", "Value")
    # numbers by value (data-sort first; a "+" and a Unicode minus read as signs), then texts ("", "–") as text;
    # lexicographic order would put "10.00" before "9.50" and "+5.00" before every negative number
    assert [r[0] for r in v.rows("t")] == ["i", "f", "d", "g", "c", "b", "a", "h", "e"]
    assert v.sort_state("t") == ("value:asc", [None, "ascending"])
    assert v.rows("t", "tfoot") == [["mean", "1.00"]]
    v.click_header("t", "Value")
    assert [r[0] for r in v.rows("t")] == ["e", "h", "a", "b", "c", "g", "d", "f", "i"]
    assert v.sort_state("t") == ("value:desc", [None, "descending"])
    v.click_header("t", "Label")
    assert [r[0] for r in v.rows("t")] == list("abcdefghi")
    assert v.rows("t", "tfoot") == [["mean", "1.00"]]
    v.assert_offline()


# ------------------------------------------------------------------------------------------------ the leaderboard

@pytest.fixture(scope="module")
def leaderboard(tmp_path_factory):
    """The leaderboard of the committed records and figures, rendered by this code into a fresh folder."""
    out = tmp_path_factory.mktemp("board") / "leaderboard.md"
    results = ROOT / "results"
    assert main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    return out.with_suffix(".html"), ResultStore(results).load(), results / "figures"


def _identity(board) -> list[str]:
    """The titles that tell a board's rows apart: method, mode (when the board has that column) and params."""
    return [t for t in ("Method", "Mode", "Params") if t in board.titles]


def _expected_order(board, title: str, rows: list[tuple], descending: bool = False) -> list[tuple]:
    """The order a stable sort by ``title``'s sort values gives, starting from ``rows`` (``_identity`` cells)."""
    key = {tuple(r[t] for t in _identity(board)): k[title] for r, k in zip(board.rows, board.sort_keys)}
    return sorted(rows, key=lambda mp: key[mp], reverse=descending)


def test_leaderboard_sorts_renders_its_figures_and_stays_offline(visit, leaderboard, screenshot_path):
    path, records, figures = leaderboard
    # the largest board ranked by mean ΔLP alone (a matched-gain board ranks methods short of its bar last, whatever
    # their ΔLP, so sorting it by ΔLP does not give back its ranks)
    board = max((b for b in leaderboard_boards(records) if "ΔLP" in b.titles and INTERVAL not in b.titles),
                key=lambda b: len(b.rows))
    table_id = f"board-{_slug(board.task)}"
    v = visit(path)

    columns = [board.titles.index(t) for t in _identity(board)]

    def methods() -> list[tuple]:
        """(method[, mode], params) of each row, as the page shows them now."""
        return [tuple(r[i] for i in columns) for r in v.rows(table_id)]

    ranked = [tuple(r[t] for t in _identity(board)) for r in board.rows]
    assert methods() == ranked and len(ranked) > 3  # as ranked in leaderboard.md

    v.click_header(table_id, "ΔLP")
    ascending = _expected_order(board, "ΔLP", ranked)
    assert methods() == ascending and ascending != ranked  # most forgetting first
    assert v.sort_state(table_id)[0] == "delta_lp_mean:asc"
    v.click_header(table_id, "ΔLP")
    assert methods() == _expected_order(board, "ΔLP", ascending, descending=True)
    assert [int(r[0]) for r in v.rows(table_id)] == sorted(int(r[0]) for r in v.rows(table_id))  # ranks 1, 2, ...
    v.click_header(table_id, "Method")
    assert [m[0] for m in methods()] == sorted(m[0] for m in ranked)

    pngs = sorted(figures.glob("*.png"))
    shown = v.images()
    assert len(shown) == len(pngs) > 0
    for png, img in zip(pngs, shown):
        assert img["complete"] and img["natural"] == png_size(png), (png.name, img)  # the file's own pixels
        assert min(img["shown"]) > 0, (png.name, img)  # laid out with a size
    v.assert_offline()
    shot = v.screenshot(screenshot_path("leaderboard.png"))
    assert_not_blank(shot, 1400, 1000)


# ------------------------------------------------------------------------------------------------ an audit report

@pytest.fixture(scope="module")
def audit_report(tmp_path_factory):
    """An audit of a tiny fine-tune on two held-out datasets: its report folder and audit.json."""
    tmp = tmp_path_factory.mktemp("audit")
    task = tiny_task(steps=3)
    record = run_one(task, "ft", 0, progress=False, weights_dir=tmp / "weights")
    tuned = weights_path(tmp / "weights", task.name, "ft", 0, record.run_id)
    suite = tmp / "suite.yaml"
    suite.write_text("name: two\nevaluate:\n  datasets: [test/colours, test/shapes]\n"
                     "  linear_probe: {C_grid: [1.0, 10.0]}\n  drift: [l2, kernel]\n")
    out = tmp / "report"
    assert main(["audit", "--reference", "mini-clip", "--tuned", str(tuned), "--suite", str(suite), "--out", str(out),
                 "--seed", "0", "--device", "cpu"]) == 0
    return out, json.loads((out / "audit.json").read_text())


def test_audit_report_sorts_keeps_its_mean_row_last_renders_its_figures(visit, audit_report, screenshot_path):
    out, result = audit_report
    v = visit(out / "report.html")
    assert v.page.text_content("p.summary").strip() == result["summary_line"]
    by_dataset = {name: m["delta_lp"] for name, m in result["heldout"].items()}
    assert [r[0] for r in v.rows("datasets")] == sorted(by_dataset)  # alphabetical, as written
    v.click_header("datasets", "ΔLP")
    assert [r[0] for r in v.rows("datasets")] == sorted(by_dataset, key=by_dataset.get)
    v.click_header("datasets", "ΔLP")
    assert [r[0] for r in v.rows("datasets")] == sorted(by_dataset, key=by_dataset.get, reverse=True)
    assert [r[0] for r in v.rows("datasets", "tfoot")] == ["mean"]  # the summary row stays below

    concepts = v.rows("concepts")
    assert len(concepts) > 1
    col = v.page.eval_on_selector_all("#concepts > thead th", "ths => ths.map(th => th.textContent)").index("Δ")
    v.click_header("concepts", "Δ")
    deltas = [float(r[col]) for r in v.rows("concepts")]
    assert deltas == sorted(deltas)
    v.click_header("concepts", "Δ")
    assert [float(r[col]) for r in v.rows("concepts")] == sorted(deltas, reverse=True)

    shown = v.images()
    assert [img["alt"] for img in shown] == ["audit-deltas.png", "audit-drift.png"]
    for img in shown:
        assert img["complete"] and img["natural"] == png_size(out / img["alt"]), img
        assert min(img["shown"]) > 0, img
    v.assert_offline()
    shot = v.screenshot(screenshot_path("audit-report.png"), full_page=True)
    assert_not_blank(shot, 1400)
