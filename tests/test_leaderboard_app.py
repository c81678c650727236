"""The leaderboard Space: its data behind the page, and the page itself in headless Chromium.

The browser test starts the Gradio app on 127.0.0.1 (temp SQLite db with the two
reference baselines, the synthetic benchmark as references), then drives Debian's
Chromium through Playwright: the table shows the baselines and sorts, a valid upload
adds a row, a bad upload shows the validation error and stores nothing.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from lora_wise.leaderboard.app import LeaderboardView, build_app, launch
from lora_wise.leaderboard.baselines import REFERENCE_METHODS, add_baselines
from lora_wise.leaderboard.store import SQLiteStore
from lora_wise.data import labels

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


def test_view_shows_configs_tables_and_validation_errors(store, synthetic_benchmark, tmp_path):
    view = LeaderboardView(store, str(synthetic_benchmark))
    assert view.configs() == ["mini_low_r8", "mini_medium_r8"]
    table = view.table(CONFIG)
    assert list(table["rank"]) == [1, 2]
    assert sorted(m.split("](")[0].strip("[").replace("\\", "") for m in table["method"]) == \
        sorted(REFERENCE_METHODS.values())
    assert list(table["MAE"]) == sorted(table["MAE"])
    assert view.table("mini_medium_r8").empty
    assert view.confusion_figure("mini_medium_r8", None) is None
    fig = view.confusion_figure(CONFIG, None)
    assert fig.axes[0].images[0].get_array().sum() == 84  # every test model counted once

    ok, message = view.submit_upload(str(write_predictions(tmp_path / "bad.csv", synthetic_benchmark, skip=4)),
                                     "m", "", "", CONFIG)
    assert not ok and "4 models have no prediction" in message
    ok, message = view.submit_upload(None, "m", "", "", CONFIG)
    assert not ok and "No file uploaded" in message
    assert len(store.entries()) == 2
    ok, message = view.submit_upload(str(write_predictions(tmp_path / "good.csv", synthetic_benchmark)),
                                     "perfect", "", "", CONFIG)
    assert ok and "Rank 1 of 3" in message and len(store.entries()) == 3


def test_space_entry_point_is_configured_by_the_environment(store, synthetic_benchmark, monkeypatch):
    import gradio as gr

    import lora_wise.leaderboard.app as app

    monkeypatch.setenv("LORA_WISE_DATASET", str(synthetic_benchmark))
    monkeypatch.setenv("LORA_WISE_LEADERBOARD_DB", str(store.path))
    demo = app.demo  # what `gradio app.py` and a Space pick up
    assert isinstance(demo, gr.Blocks)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"board-mini_low_r8", "board-mini_medium_r8", "submit-file", "submit-status", "overview"} <= ids
    table = next(b for b in demo.blocks.values() if b.elem_id == "board-mini_low_r8")
    assert len(table.value["data"]) == 2  # the two reference baselines in the store the env points at


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(store, synthetic_benchmark, monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-uploads"))
    demo = build_app(store=store, dataset=synthetic_benchmark)
    port = _free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", store
    finally:
        demo.close()


def _methods(page) -> list[str]:
    return page.locator(f"#board-{CONFIG} [role=row].virtual-row [data-col='1']").all_inner_texts()


def _upload(page, path, method: str) -> str:
    page.get_by_role("tab", name="Submit").click()
    clear = page.locator("#submit-file button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.set_input_files("#submit-file input[type=file]", str(path))
    page.wait_for_selector(f"#submit-file td.filename[aria-label='{path.name}']")  # shown once uploaded
    page.fill("#submit-method textarea, #submit-method input", method)
    page.click("#submit-config input")
    page.click(f"[role=option]:has-text('{CONFIG}')")
    status = "() => { const box = document.querySelector('#submit-status .lb-ok, #submit-status .lb-error');" \
             " return box ? box.innerText : ''; }"
    before = page.evaluate(status)
    page.click("#submit-button")
    page.wait_for_function(f"before => ({status})() !== before", arg=before, timeout=30_000)
    return page.evaluate(status)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_browser_upload_adds_a_row_and_a_bad_file_shows_its_error(served, synthetic_benchmark, tmp_path):
    from playwright.sync_api import sync_playwright

    url, store = served
    good = write_predictions(tmp_path / "good.csv", synthetic_benchmark, shift=0.25)
    bad = write_predictions(tmp_path / "bad.csv", synthetic_benchmark, skip=7)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1400})
            page.goto(url)
            page.wait_for_selector(f"#board-{CONFIG} [role=row].virtual-row")
            ranked = _methods(page)
            assert sorted(ranked) == sorted(REFERENCE_METHODS.values())

            # the table sorts from the header menu: MAE descending reverses the ranking
            page.click(f"#board-{CONFIG} th[title='MAE'] .header-content")  # shows the header's ⋮ menu button
            page.click(f"#board-{CONFIG} th[title='MAE'] button.cell-menu-button")
            page.get_by_role("menuitem", name="Sort descending").click()
            page.wait_for_function(
                f"document.querySelector(\"#board-{CONFIG} [role=row].virtual-row [data-col='1']\")"
                f".innerText.trim() === {ranked[-1]!r}")
            assert _methods(page) == ranked[::-1]

            status = _upload(page, good, "browser-method")
            assert status.startswith("Submitted.") and "Rank 1 of 3" in status
            page.get_by_role("tab", name=CONFIG).click()
            page.wait_for_function(f"document.querySelector('#board-{CONFIG}').innerText.includes('browser-method')")
            assert "browser-method" in _methods(page)
            page.screenshot(path=str(tmp_path / "after-upload.png"), full_page=True)

            status = _upload(page, bad, "bad-method")
            assert status.startswith("Not stored:")
            assert "7 models have no prediction among the 84 of the test split of mini_low_r8" in status
            page.screenshot(path=str(tmp_path / "after-bad-upload.png"), full_page=True)
            page.get_by_role("tab", name=CONFIG).click()
            assert "bad-method" not in _methods(page)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # for the person debugging
            raise
        finally:
            browser.close()
    assert sorted(e.method for e in store.entries()) == sorted([*REFERENCE_METHODS.values(), "browser-method"])
