"""Hostile and careless input to the leaderboard, through the CLI and the Python call (the browser: test_leaderboard_app).

Two halves: what a submission may not bring in (refused in one line, exit status 2, nothing
stored), and what rows stored before the policy (or written to a results repo by hand) can
still hold -- shown as text everywhere: the terminal, JSON, the app's tables and figures.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from lora_wise.cli import main
from lora_wise.data import labels
from lora_wise.leaderboard.app import LeaderboardView, build_app
from lora_wise.leaderboard.entries import Entry
from lora_wise.leaderboard.scoring import submit
from lora_wise.leaderboard.store import SQLiteStore
from lora_wise.errors import LoRAWiSEError

CONFIG = "mini_low_r8"
MATHTEXT = "math $\\foo$ x"
IMG_LINK = 'https://x.org/) <img src="http://127.0.0.1:9/t.png">'
ESCAPES = "red\x1b[31m \x1b]8;;https://evil.example\x07click\x1b]8;;\x07 \x1b[2J"
BIDI = "txt.\u202eexe.bat"


@pytest.fixture(scope="module")
def truth(synthetic_benchmark):
    found = labels(synthetic_benchmark, CONFIG, "test")
    return dict(zip(found.model_ids, found.dataset_sizes.tolist()))


def csv(path, predictions):
    path.write_text("model_id,prediction\n" + "".join(f"{m},{v!r}\n" for m, v in predictions.items()))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- what a submission may not bring in

REFUSED_OPTIONS = {
    "img link (closes the Markdown link)": (["--link", IMG_LINK], r"the link .* holds U\+0020 SPACE"),
    "javascript link": (["--link", "javascript:alert(document.cookie)"], "is not a web address"),
    "link with credentials": (["--link", "https://admin:hunter2@x.org/"], "holds a user name or password"),
    "link with a quote": (["--link", 'https://x.org/"onmouseover="alert(1)'], r"U\+0022 QUOTATION MARK"),
    "terminal escapes in the method": (["--method", ESCAPES], r"the method contains a control character, U\+001B"),
    "bidi override in the method": (["--method", BIDI], r"U\+202E RIGHT-TO-LEFT OVERRIDE"),
    "newline in the authors": (["--authors", "A\nB"], r"the authors contains a control character, U\+000A"),
    "zero-width space in the authors": (["--authors", "A\u200bB"], r"U\+200B ZERO WIDTH SPACE"),
    "a method of 101 characters": (["--method", "m" * 101], "keep it to 100 or fewer"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_OPTIONS))
def test_hostile_text_is_refused_in_one_line_through_cli_and_python(case, tmp_path, synthetic_benchmark, truth,
                                                                    capsys):
    extra, message = REFUSED_OPTIONS[case]
    pred = csv(tmp_path / "p.csv", truth)
    db = tmp_path / "lb.sqlite"
    argv = ["submit", pred, "--config", CONFIG, "--method", "fine", "--dataset", synthetic_benchmark,
            "--db", db, *extra]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert "\x1b" not in err and "\u202e" not in err  # the message quotes nothing a terminal would run
    options = dict(zip(extra[::2], extra[1::2]))
    with pytest.raises(LoRAWiSEError, match=message):  # the same from Python
        submit(pred, config=CONFIG, dataset=synthetic_benchmark, store=SQLiteStore(db),
               **{"method": "fine", **{k.lstrip("-"): v for k, v in options.items()}})
    assert SQLiteStore(db).entries() == []


@pytest.mark.parametrize("value, message", [
    ("1.7e308", r"1 prediction is over 1,000,000,000 images \(line 2: '1\.7e308'\)"),
    ("1e10", "over 1,000,000,000 images"),
    ("1e309", "NaN or infinite"),
    ("-inf", "NaN or infinite"),
    ("nan", "NaN or infinite"),
    ("-3", "zero or negative"),
    ("0", "zero or negative"),
    ("1e-400", "zero or negative"),  # underflows to 0.0
    ("0x10", "not a number"),
])
def test_predictions_are_numbers_a_dataset_size_can_be(value, message, tmp_path, synthetic_benchmark, truth, capsys):
    first = next(iter(truth))
    path = tmp_path / "p.csv"
    path.write_text("model_id,prediction\n" + f"{first},{value}\n" + "".join(f"{m},{s}\n" for m, s in truth.items()
                                                                          if m != first))
    code, out, err = run(capsys, "submit", path, "--config", CONFIG, "--method", "big", "--dataset",
                         synthetic_benchmark, "--db", tmp_path / "lb.sqlite")
    assert code == 2 and re.search(message, err), err
    assert SQLiteStore(tmp_path / "lb.sqlite").entries() == []


def test_the_largest_predictions_keep_metrics_finite_json_valid_and_tables_readable(tmp_path, synthetic_benchmark,
                                                                                    truth, capsys):
    db = tmp_path / "lb.sqlite"
    run(capsys, "submit", csv(tmp_path / "ok.csv", truth), "--config", CONFIG, "--method", "exact", "--dataset",
        synthetic_benchmark, "--db", db)
    _, before, _ = run(capsys, "leaderboard", "show", "--db", db)
    huge = csv(tmp_path / "huge.csv", {m: 1e9 for m in truth})  # the largest accepted
    code, _, err = run(capsys, "submit", huge, "--config", CONFIG, "--method", "huge", "--dataset",
                       synthetic_benchmark, "--db", db)
    assert code == 0, err
    (_, huge_entry) = SQLiteStore(db).entries()
    assert np.isfinite([huge_entry.mae, huge_entry.mape, huge_entry.accuracy]).all()
    code, out, _ = run(capsys, "leaderboard", "show", "--db", db, "--json")
    shown = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert [e["method"] for e in shown] == ["exact", "huge"]
    code, out, _ = run(capsys, "leaderboard", "show", "--db", db)
    widest = lambda text: max(map(len, text.splitlines()))  # noqa: E731
    assert widest(out) - widest(before) <= 12  # a 1e9 MAE takes a few more digits, not 300


# --------------------------------------------------------------------------- rows stored before the policy

@pytest.fixture()
def old_rows(tmp_path, truth, monkeypatch):
    """A store holding rows the policy would refuse today, written as an older lora-wise (or a hand) would."""
    store = SQLiteStore(tmp_path / "old.sqlite")
    with monkeypatch.context() as m:
        m.setattr(Entry, "check", lambda self: self)
        rows = [(MATHTEXT, "", ""), ("plain", "", IMG_LINK), (ESCAPES, BIDI, ""),
                ("<script>alert(1)</script>", "**bold** [x](http://127.0.0.1:9/a)", "javascript:alert(1)")]
        for i, (method, authors, link) in enumerate(rows):
            predictions = {mid: float(size + (i + 1) * 0.1 * (k % 3)) for k, (mid, size) in enumerate(truth.items())}
            t = np.array(list(truth.values()), dtype=float)
            p = np.array(list(predictions.values()))
            metrics = {"mae": float(np.mean(np.abs(p - t))), "mape": float(np.mean(np.abs(p - t) / t)),
                       "accuracy": float(np.mean(np.round(p) == t)),
                       "per_size": {str(s): {"mae": 0.0, "mape": 0.0, "accuracy": 1.0 - 0.1 * i, "count": 14}
                                    for s in sorted(set(truth.values()))},
                       "confusion_matrix": {"labels": [1, 2], "matrix": [[1, 0], [0, 1]]}}
            store.append(Entry(method=method, authors=authors, link=link, config=CONFIG, split="test",
                               dataset="lora-wise", metrics=metrics, predictions=predictions))
    return store


def test_show_prints_old_rows_as_visible_text(old_rows, capsys):
    code, out, _ = run(capsys, "leaderboard", "show", "--db", old_rows.path)
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out  # nothing for the terminal to run
    assert "red\\x1b[31m" in out and MATHTEXT in out
    assert out.isprintable() or all(line.isprintable() for line in out.splitlines())
    code, out, _ = run(capsys, "leaderboard", "show", "--db", old_rows.path, "--json")
    assert out.isascii() and "\\u001b" in out and "\\u202e" in out  # JSON escapes, valid JSON
    assert {e["method"] for e in json.loads(out)} >= {MATHTEXT, ESCAPES}


def test_the_app_shows_old_rows_as_text_and_its_figures_draw(old_rows, synthetic_benchmark):
    view = LeaderboardView(old_rows, str(synthetic_benchmark))
    table = view.table(CONFIG)
    cells = " ".join(table["method"]) + " ".join(table["authors"])
    assert "<img" not in cells and "<script" not in cells and "&lt;script&gt;" in cells
    assert "127.0.0.1:9" not in "".join(c for c in table["method"] if "<a " in c)  # bad links are not links
    assert not any("javascript:" in c for c in table["method"])
    assert "\x1b" not in cells and "\u202e" not in cells and "\\x1b[31m" in cells
    assert MATHTEXT in cells
    for fig in (view.overview_figure(), view.confusion_figure(CONFIG, None),
                view.per_size_figure(CONFIG, view.entries(CONFIG))):
        fig.savefig(io.BytesIO(), format="png")  # mathtext in a name would raise here
    for frame in (view.overview(), view.history(), view.per_size(CONFIG, view.entries(CONFIG))):
        assert "<img" not in frame.to_string() and "<script" not in frame.to_string()
    build_app(store=old_rows, dataset=synthetic_benchmark)  # `leaderboard serve` starts (it crashed on mathtext)


def test_withdraw_from_the_cli_leaves_the_history(old_rows, capsys):
    entries = old_rows.entries()
    code, out, err = run(capsys, "leaderboard", "withdraw", entries[2].short_id, "--reason", "escape codes",
                         "--db", old_rows.path)
    assert code == 0, err
    assert f"withdrew entry {entries[2].short_id}" in out and "\x1b" not in out
    code, out, _ = run(capsys, "leaderboard", "show", "--db", old_rows.path)
    assert entries[2].short_id not in out and "red\\x1b" not in out
    code, out, _ = run(capsys, "leaderboard", "show", "--db", old_rows.path, "--all")
    line = next(line for line in out.splitlines() if entries[2].short_id in line)
    assert "withdrawn" in line and "escape codes" in line and line.split()[0] == "-"
    code, out, _ = run(capsys, "leaderboard", "show", "--db", old_rows.path, "--json", "--all")
    withdrawn = [e for e in json.loads(out) if e["withdrawn"]]
    assert [(e["id"], e["withdrawn"]["reason"]) for e in withdrawn] == [(entries[2].id, "escape codes")]
    for bad, message in (("\x1b[2J", "control character"), ("", "reason is empty")):
        code, out, err = run(capsys, "leaderboard", "withdraw", entries[0].id, "--reason", bad, "--db", old_rows.path)
        assert code == 2 and message in err
    code, _, err = run(capsys, "leaderboard", "withdraw", entries[2].id, "--reason", "twice", "--db", old_rows.path)
    assert code == 2 and "already withdrawn" in err
    assert len(old_rows.withdrawals()) == 1 and len(old_rows.entries()) == 4
