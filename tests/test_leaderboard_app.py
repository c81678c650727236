"""The leaderboard Space: its data behind the page, and the page itself in headless Chromium.

The browser tests start the Gradio app on 127.0.0.1 (temp SQLite db with the two
reference baselines, the synthetic benchmark as references), then drive Debian's
Chromium through Playwright: the table shows the baselines and sorts, a valid upload
adds a row, a results record uploaded through the form shows its standard-split score and
its 10-draw mean, a bad upload shows the validation error and stores nothing, the overview,
per-size and About tabs show what they promise (the BibTeX copy button fills the clipboard);
and, with hostile rows in the store, every tab shows names as text, shows no "Error", and
the browser makes no request to the address an old row's link tried to smuggle in.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket

import numpy as np
import pytest

from lora_wise import results
from lora_wise.citation import BIBTEX
from lora_wise.configs import get_config
from lora_wise.leaderboard.app import LeaderboardView, build_app, launch
from lora_wise.leaderboard.baselines import REFERENCE_METHODS, add_baselines
from lora_wise.leaderboard.entries import Entry
from lora_wise.leaderboard.store import SQLiteStore, ranked_entries
from lora_wise.data import labels
from lora_wise.splits import draws
from lora_wise.splits import standard_split

CONFIG = "mini_low_r8"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory, synthetic_benchmark):
    """A leaderboard file holding the two reference baselines of mini_low_r8."""
    path = tmp_path_factory.mktemp("board") / "seed.sqlite"
    add_baselines(synthetic_benchmark, configs=[CONFIG], store=SQLiteStore(path))
    return path


@pytest.fixture()
def store(seeded_db, tmp_path):
    copy = tmp_path / "leaderboard.sqlite"
    shutil.copyfile(seeded_db, copy)
    return SQLiteStore(copy)


def write_predictions(path, synthetic_benchmark, skip: int = 0, shift: float = 0.0):
    found = labels(synthetic_benchmark, CONFIG, "test")
    pairs = list(zip(found.model_ids, found.dataset_sizes.tolist()))[skip:]
    path.write_text("model_id,prediction\n" + "".join(f"{m},{s + shift}\n" for m, s in pairs))
    return path


def shown_text(cell: str) -> str:
    """What a browser shows of an HTML cell: its text, tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", cell))


def write_record(path, synthetic_benchmark, name="record-method", shift=0.3, protocol="paper"):
    """A results record (lora_wise.results) whose predictions are the true sizes plus ``shift`` on every draw."""
    models = {}
    for split in ("train", "test"):
        found = labels(synthetic_benchmark, CONFIG, split)
        models.update(zip(found.model_ids, zip(found.dataset_sizes.tolist(), found.micro_dataset_indices.tolist())))
    out = []
    for i, split in enumerate(draws(CONFIG, results.PROTOCOLS[protocol])):
        predictions = {m: size + shift * (1 + i % 3) for m, (size, micro) in models.items() if micro in split.test}
        errors = np.array([predictions[m] - models[m][0] for m in predictions])
        sizes = np.array([models[m][0] for m in predictions], dtype=float)
        out.append({"draw": i, "train_micro_datasets": list(split.train), "test_micro_datasets": list(split.test),
                    "metrics": {"mae": float(np.abs(errors).mean()), "mape": float((np.abs(errors) / sizes).mean()),
                                "accuracy": float((np.round(sizes + errors) == sizes).mean())},
                    "predictions": predictions})
    record = results.new_record(
        dataset={"source": "lora-wise", "config": CONFIG, "fingerprint": "sha256:" + "1" * 64,
                 "checkpoint_step": get_config(CONFIG).checkpoint_step},
        method={"name": name, "class": "mine:Method", "params": {}}, protocol=protocol, draws=out)
    path.write_text(json.dumps(record))
    return path


def test_view_shows_configs_tables_and_validation_errors(store, synthetic_benchmark, tmp_path):
    view = LeaderboardView(store, str(synthetic_benchmark))
    assert view.configs() == ["mini_low_r8", "mini_medium_r8"]
    table = view.table(CONFIG)
    assert list(table["rank"]) == [1, 2]
    assert sorted(shown_text(m) for m in table["method"]) == sorted(REFERENCE_METHODS.values())
    assert all(m.startswith('<a href="https://arxiv.org/abs/2406.19395" ') for m in table["method"])
    maes = [float(v) for v in table["MAE (standard split)"]]
    assert maes == sorted(maes)
    assert all(re.fullmatch(r"\d+\.\d{3} ± \d+\.\d{3}", v) for v in table["MAE (paper protocol: mean ± std of 10 draws)"])
    overview = view.overview()
    assert list(overview["config"]) == [CONFIG, CONFIG] and list(overview["rank"]) == [1, 2]
    sizes = view.per_size(CONFIG, view.entries(CONFIG))
    assert list(sizes.columns) == ["method", "1 image"] + [f"{s} images" for s in get_config(CONFIG).dataset_sizes[1:]]
    best = ranked_entries(store, CONFIG, "test")[0]
    assert sizes.iloc[0, 1] == f"{100 * best.metrics['per_size']['1']['accuracy']:.2f}%"
    assert view.table("mini_medium_r8").empty
    assert view.confusion_figure("mini_medium_r8", None) is None
    fig = view.confusion_figure(CONFIG, None)
    assert fig.axes[0].images[0].get_array().sum() == len(standard_split("mini_low_r8").test) * 6  # every test model counted once

    ok, message = view.submit_upload(str(write_predictions(tmp_path / "bad.csv", synthetic_benchmark, skip=4)),
                                     "m", "", "", CONFIG)
    assert not ok and "4 models have no prediction" in message
    ok, message = view.submit_upload(None, "m", "", "", CONFIG)
    assert not ok and "No file uploaded" in message
    assert len(store.entries()) == 2
    ok, message = view.submit_upload(str(write_predictions(tmp_path / "good.csv", synthetic_benchmark)),
                                     "perfect", "", "", CONFIG)
    assert ok and "Rank 1 of 3" in message and len(store.entries()) == 3
    ok, message = view.submit_upload(str(write_record(tmp_path / "r.json", synthetic_benchmark)), "", "", "", "")
    assert ok and "paper protocol: mean ± std of 10 draws: MAE" in message and "Rank 2 of 4" in message


def test_space_entry_point_is_configured_by_the_environment(store, synthetic_benchmark, monkeypatch):
    import gradio as gr

    import lora_wise.leaderboard.app as app

    monkeypatch.setenv("LORA_WISE_DATASET", str(synthetic_benchmark))
    monkeypatch.setenv("LORA_WISE_LEADERBOARD_DB", str(store.path))
    demo = app.demo  # what `gradio app.py` and a Space pick up
    assert isinstance(demo, gr.Blocks)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"board-mini_low_r8", "board-mini_medium_r8", "submit-file", "submit-status", "overview",
            "overview-table", "history-table", "sizes-mini_low_r8", "sizes-plot-mini_low_r8", "about-bibtex"} <= ids
    table = next(b for b in demo.blocks.values() if b.elem_id == "board-mini_low_r8")
    assert len(table.value["data"]) == 2  # the two reference baselines in the store the env points at


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store, synthetic_benchmark, monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-uploads"))
    demo = build_app(store=store, dataset=synthetic_benchmark)
    port = _free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture()
def served(store, synthetic_benchmark, monkeypatch, tmp_path):
    demo, url = _serve(store, synthetic_benchmark, monkeypatch, tmp_path)
    try:
        yield url, store
    finally:
        demo.close()


@pytest.fixture()
def browser_page(tmp_path):
    """A headless Chromium page (clipboard allowed), its screenshot kept in tmp_path when a test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1300, "height": 1400},
                                      permissions=["clipboard-read", "clipboard-write"])
        page = context.new_page()
        try:
            yield page
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # for the person debugging
            raise
        finally:
            browser.close()


def _methods(page, table: str = f"board-{CONFIG}", column: int = 1) -> list[str]:
    return page.locator(f"#{table} [role=row].virtual-row [data-col='{column}']").all_inner_texts()


def _upload(page, path, method: str = "", config: str = CONFIG, link: str = "") -> str:
    page.get_by_role("tab", name="Submit").click()
    clear = page.locator("#submit-file button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.set_input_files("#submit-file input[type=file]", str(path))
    page.wait_for_selector(f"#submit-file td.filename[aria-label='{path.name}']")  # shown once uploaded
    page.fill("#submit-method textarea, #submit-method input", method)
    page.fill("#submit-link textarea, #submit-link input", link)
    page.click("#submit-config input")
    page.get_by_role("option", name=config).click()
    status = "() => { const box = document.querySelector('#submit-status .lb-ok, #submit-status .lb-error');" \
             " return box ? box.innerText : ''; }"
    before = page.evaluate(status)
    page.click("#submit-button")
    page.wait_for_function(f"before => ({status})() !== before", arg=before, timeout=30_000)
    return page.evaluate(status)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_browser_upload_adds_a_row_and_a_bad_file_shows_its_error(served, synthetic_benchmark, tmp_path,
                                                                  browser_page):
    url, store = served
    page = browser_page
    good = write_predictions(tmp_path / "good.csv", synthetic_benchmark, shift=0.25)
    bad = write_predictions(tmp_path / "bad.csv", synthetic_benchmark, skip=7)
    record = write_record(tmp_path / "results.json", synthetic_benchmark)
    page.goto(url)
    page.get_by_role("tab", name=CONFIG).click()
    page.wait_for_selector(f"#board-{CONFIG} [role=row].virtual-row")
    ranked = _methods(page)
    assert sorted(ranked) == sorted(REFERENCE_METHODS.values())

    # the table sorts from the header menu: MAE descending reverses the ranking
    header = f"#board-{CONFIG} th[title='MAE (standard split)']"
    page.click(f"{header} .header-content")  # shows the header's ⋮ menu button
    page.click(f"{header} button.cell-menu-button")
    page.get_by_role("menuitem", name="Sort descending").click()
    page.wait_for_function(
        f"document.querySelector(\"#board-{CONFIG} [role=row].virtual-row [data-col='1']\")"
        f".innerText.trim() === {ranked[-1]!r}")
    assert _methods(page) == ranked[::-1]

    status = _upload(page, good, "browser-method")
    assert status.startswith("Submitted.") and "Rank 1 of 3" in status and "standard split: MAE 0.250" in status
    page.get_by_role("tab", name=CONFIG).click()
    page.wait_for_function(f"document.querySelector('#board-{CONFIG}').innerText.includes('browser-method')")
    assert "browser-method" in _methods(page)
    assert "browser-method" in _methods(page, f"sizes-{CONFIG}", 0)  # accuracy per size: a row per entry

    # a results record through the form, its config and method from the file: both numbers, labelled
    status = _upload(page, record, config="from the file (a results record, or its `config` column)")
    assert status.startswith("Submitted.") and "record-method" in status
    assert re.search(r"paper protocol: mean ± std of 10 draws: MAE \d\.\d{3} ± \d\.\d{3}", status)
    page.get_by_role("tab", name="Overview").click()
    page.wait_for_function("document.querySelector('#overview-table').innerText.includes('record-method')")
    row = next(r for r in page.locator("#overview-table [role=row].virtual-row").all_inner_texts()
               if "record-method" in r)
    assert re.search(r"\d\.\d{3} ± \d\.\d{3}", row)  # the 10-draw mean in its labelled column
    headers = page.locator("#overview-table th").all_inner_texts()
    assert any("paper protocol: mean ± std of 10 draws" in h for h in headers)
    assert any("standard split" in h for h in headers)
    page.screenshot(path=str(tmp_path / "after-upload.png"), full_page=True)

    status = _upload(page, bad, "bad-method")
    assert status.startswith("Not stored:")
    assert f"7 models have no prediction among the {len(standard_split('mini_low_r8').test) * 6} of the test split of mini_low_r8" in status
    status = _upload(page, good, "browser-method again")
    assert status.startswith("Not stored:") and "already on the leaderboard" in status
    page.get_by_role("tab", name=CONFIG).click()
    assert "bad-method" not in _methods(page)

    # About: the citation, and its copy button puts the BibTeX on the clipboard
    page.get_by_role("tab", name="About").click()
    page.locator("#about-bibtex button[aria-label='Copy']").click()
    assert page.evaluate("navigator.clipboard.readText()").strip() == BIBTEX
    assert sorted(e.method for e in store.entries()) == \
        sorted([*REFERENCE_METHODS.values(), "browser-method", "record-method"])


MATHTEXT = "math $\\foo$ x"
IMG_LINK = 'https://x.org/) <img src="http://127.0.0.1:9/t.png">'
#: Rows the policy refuses today, as an older lora-wise (or a hand editing the results repo) could have stored them.
HOSTILE_ROWS = [
    (MATHTEXT, "", ""),
    ("tracking pixel", "", IMG_LINK),
    ("<img src=http://127.0.0.1:9/u.png onerror=alert(1)>", "<script>alert(2)</script>", "javascript:alert(3)"),
    ("bidi \u202etxt.exe", "**bold** [x](http://127.0.0.1:9/a)", ""),
]


@pytest.fixture()
def hostile_store(store, synthetic_benchmark, monkeypatch):
    found = labels(synthetic_benchmark, CONFIG, "test")
    truth = dict(zip(found.model_ids, found.dataset_sizes.tolist()))
    with monkeypatch.context() as m:
        m.setattr(Entry, "check", lambda self: self)
        for i, (method, authors, link) in enumerate(HOSTILE_ROWS):
            predictions = {mid: size + 0.1 * (i + 1) for mid, size in truth.items()}
            template = store.entries()[0].metrics
            store.append(Entry(method=method, authors=authors, link=link, config=CONFIG, split="test",
                               dataset=str(synthetic_benchmark), predictions=predictions,
                               metrics={**template, "mae": 0.1 * (i + 1)}))
    return store


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_browser_shows_hostile_rows_as_text_and_requests_nothing_they_name(hostile_store, synthetic_benchmark,
                                                                           monkeypatch, tmp_path, browser_page):
    demo, url = _serve(hostile_store, synthetic_benchmark, monkeypatch, tmp_path)  # `serve` starts: no mathtext crash
    page = browser_page
    requests, dialogs = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(url)
        page.wait_for_selector("#overview-table [role=row].virtual-row")
        for tab in ("Overview", CONFIG, "History"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(500)
            text = page.inner_text("body")
            assert MATHTEXT in text  # as typed, in tables and the dropdown
            assert "<img src=http://127.0.0.1:9/u.png onerror=alert(1)>" in text  # markup shown as text
            assert page.get_by_text("Error", exact=True).count() == 0  # no component failed
        page.get_by_role("tab", name=CONFIG).click()
        page.wait_for_selector(f"#board-{CONFIG} [role=row].virtual-row")
        assert "<script>alert(2)</script>" in _methods(page, f"board-{CONFIG}", 2)
        assert "bidi \\u202etxt.exe" in page.inner_text(f"#board-{CONFIG}")  # a bidi override as a visible escape
        assert page.locator("img[src*='127.0.0.1:9']").count() == 0
        assert page.locator("a[href^='javascript:'], a[href*='127.0.0.1:9']").count() == 0
        assert page.locator(f"#board-{CONFIG} a[href='https://arxiv.org/abs/2406.19395']").count() == 2  # good links stay
        # the confusion matrix of the mathtext entry draws (a plot that fails shows "Error")
        page.click(f"#entry-{CONFIG} input")
        page.get_by_role("option", name=re.compile(re.escape(MATHTEXT))).click()
        page.wait_for_timeout(1000)
        assert page.locator(f"#confusion-{CONFIG} img").count() == 1
        assert page.get_by_text("Error", exact=True).count() == 0

        # through the form: the smuggling link is refused; a mathtext name is fine and everything still draws
        good = write_predictions(tmp_path / "fine.csv", synthetic_benchmark, shift=0.05)
        status = _upload(page, good, "pixel", link=IMG_LINK)
        assert status.startswith("Not stored:") and "holds U+0020 SPACE" in status
        status = _upload(page, good, "escape\u202e")
        assert status.startswith("Not stored:") and "U+202E RIGHT-TO-LEFT OVERRIDE" in status
        status = _upload(page, good, "form $\\alpha$ name", link="https://example.org/a%20b")
        assert status.startswith("Submitted."), status
        page.get_by_role("tab", name=CONFIG).click()
        page.wait_for_function(f"document.querySelector('#board-{CONFIG}').innerText.includes('form $\\\\alpha$ name')")
        assert page.get_by_text("Error", exact=True).count() == 0
        page.screenshot(path=str(tmp_path / "hostile.png"), full_page=True)
    finally:
        demo.close()
    assert not [u for u in requests if "127.0.0.1:9/" in u], requests  # no tracking pixel fetched
    assert dialogs == []  # no script ran
    assert [e.method for e in hostile_store.entries()][-1] == "form $\\alpha$ name"


def test_the_about_tab_cites_the_paper_as_readme_and_citation_cff_do():
    import yaml

    from lora_wise.citation import ARXIV_ID, PAPER_TITLE, PAPER_URL
    from module_graph import REPOSITORY

    assert BIBTEX in (REPOSITORY / "README.md").read_text()  # the README's block is the same text
    cff = yaml.safe_load((REPOSITORY / "CITATION.cff").read_text())["preferred-citation"]
    assert (cff["title"], cff["url"], cff["journal"]) == (PAPER_TITLE, PAPER_URL, f"arXiv preprint arXiv:{ARXIV_ID}")
    assert " and ".join(f"{a['family-names']}, {a['given-names']}" for a in cff["authors"]) in BIBTEX
