"""The LoRA-WiSE leaderboard as a Gradio app; runs as a Hugging Face Space from this file.

Tabs:

* **Overview**: every config, every ranked entry's rank, its standard-split MAE and accuracy
  and, for results records, the paper protocol's mean ± std; MAE, MAPE and accuracy per config
  and method as a figure;
* **one per config** (those the reference dataset holds, and any with entries): the sortable,
  searchable ranked table, the confusion matrix of a chosen entry, and the accuracy per true
  dataset size of every entry (a table and a figure);
* **History**: every entry ever stored, withdrawn ones with their date and reason;
* **Submit**: an upload form -- a predictions file or a results record -- that calls
  ``scoring.submit``, the same validation as ``lora-wise submit``, and shows its error in the page;
* **About**: the task, the protocols, and the paper's citation with a BibTeX copy button.

Every number is shown beside the protocol it belongs to (``standard split`` or ``paper protocol:
mean ± std of 10 draws``).  User text is shown as text, never as markup: table cells are HTML
built with ``html.escape`` (a link only when it passes today's policy, ``lora_wise.text``),
control and bidi characters of older rows appear as visible escapes, and figures draw without
mathtext (``lora_wise.figures.as_plain_text``).

Configured by environment variables, as a Space is:

* ``LORA_WISE_DATASET``: the dataset whose test splits are the references
  (a folder or a Hub repo id; default ``lora-wise``);
* ``LORA_WISE_LEADERBOARD_REPO``: keep results in this Hub dataset repo (a public Space);
* ``LORA_WISE_LEADERBOARD_DB``: otherwise, the SQLite file (default under the cache dir);
* ``LORA_WISE_SEED_BASELINES=1``: when the app is built, add the two reference baselines of
  each config of the dataset that has no reference entry in the store (a fresh Space; failures
  are logged and the app starts anyway).

``python -m lora_wise.leaderboard.app`` (or ``lora-wise leaderboard serve``) starts it locally;
``lora-wise leaderboard deploy`` (``space.py``) assembles and uploads it as a Space.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from lora_wise.citation import BIBTEX, PAPER_URL
from lora_wise.configs import CONFIGS, get_config
from lora_wise.errors import LoRAWiSEError, UnknownConfigError
from lora_wise.text import visible

from .baselines import seed_baselines, seeding_requested
from .entries import (BOARD_COLUMNS, PROTOCOL_LABELS, Entry, Withdrawal, active, board_rows, format_metric,
                      metric_header, rank_entries)
from .references import DEFAULT_SPLIT, available_configs, default_dataset
from .scoring import format_scores, submit
from .store import Store, open_store
from .submission import MAX_BYTES, MAX_ROWS

TITLE = "LoRA-WiSE leaderboard"
INTRO = f"""\
# LoRA-WiSE leaderboard

**Dataset size recovery from LoRA weights**: given a LoRA fine-tune of a text-to-image model, predict
how many images it was fine-tuned on ([Salama et al., 2024]({PAPER_URL})).
Entries are ranked on the **{PROTOCOL_LABELS['standard']}** (the test split) of each config by MAE
(then MAPE, then date), scored here with the `dataset_size_recovery` metric. Entries made from a
results record also show the **{PROTOCOL_LABELS['paper']}** (the paper's protocol), recomputed here
from their predictions. Reference rows are the paper's baselines (DSiRe, Frobenius-NN).
Sort by any column from the ⋮ menu of its header; search filters the rows.
"""
SUBMIT_HELP = f"""\
Upload either

* a **results record** (the JSON `lora-wise evaluate ... --out results.json` writes): every draw's
  metrics are recomputed from its predictions against this leaderboard's references and splits,
  and the board shows its {PROTOCOL_LABELS['standard']} score and its 10-draw mean ± std; or
* a **predictions file**: a **CSV** with a header `model_id,prediction` (or **JSON Lines**, one
  `{{"model_id": ..., "prediction": ...}}` per line) with one prediction for **every model of the test
  split** of the chosen config: a finite positive number of images, each model once. Optional columns
  `method`, `authors`, `link`, `config`, `split` must agree with the form.

The method and authors are one line of visible text (no control, escape, bidi or format characters);
the link is an absolute, percent-encoded http(s) URL. The same predictions for the same config are
refused as a duplicate. At most {MAX_BYTES // 2**20} MB and {MAX_ROWS:,} rows. The command line does the same:
`lora-wise submit results.json` or `lora-wise submit predictions.csv --config CONFIG --method NAME`.
"""
ABOUT = f"""\
## About

LoRA-WiSE is the benchmark of *Dataset Size Recovery from LoRA Weights* ([arXiv]({PAPER_URL})):
LoRA fine-tunes of Stable Diffusion on micro-datasets of known size, split by micro-dataset.

**Protocols.** The *{PROTOCOL_LABELS['standard']}* is the first draw of the reference protocol
(`random.seed(42)`, then `random.sample` of the train micro-datasets); the leaderboard ranks it.
The *paper protocol* is the first 10 draws, reported as mean ± standard deviation, as in the paper;
entries submitted as results records carry it. Both are scored here from the submitted predictions.

**Metrics.** MAE in images; MAPE (mean absolute error relative to the true size) and accuracy (the
share of predictions that round to the true size), shown in percent.

Please cite the paper when you use the benchmark:
"""
#: The ranked table: method is HTML this module escapes; every number is text from ``format_metric``.
COLUMNS = BOARD_COLUMNS
DATATYPES = ["number", "html"] + ["str"] * (len(BOARD_COLUMNS) - 2)
WIDTHS = ["5%", "17%", "13%", "8%", "8%", "9%", "11%", "11%", "8%", "5%", "5%"]
OVERVIEW_COLUMNS = ["config", "rank", "method", "kind", metric_header("mae"), metric_header("mae", "paper"),
                    metric_header("accuracy"), metric_header("accuracy", "paper")]
HISTORY_COLUMNS = ["date", "config", "method", metric_header("mae"), "status", "id"]


def _markdown_text(text: str) -> str:
    """Escape Markdown so a name shows as typed."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|<>$" else ch for ch in visible(text))


def method_cell(entry: Entry) -> str:
    """The method as escaped HTML text, a link (``rel=nofollow``) only when the stored link passes the policy."""
    name = html.escape(visible(entry.method), quote=True)
    link = entry.shown_link
    if not link:
        return name
    return f'<a href="{html.escape(link, quote=True)}" target="_blank" rel="noopener noreferrer nofollow">{name}</a>'


class LeaderboardView:
    """What the page shows, computed from the store (the callbacks of the app)."""

    def __init__(self, store: Store, dataset: str, split: str = DEFAULT_SPLIT):
        self.store, self.dataset, self.split = store, dataset, split

    def entries(self, config: str | None = None) -> list[Entry]:
        """The ranked (not withdrawn) entries of ``config`` (all configs: None) on the view's split."""
        return active(self.store.entries(config, self.split), self.store.withdrawals(config))

    def read(self) -> tuple[list[Entry], list[Withdrawal]]:
        """Every entry of the view's split and every withdrawal, in one read of the store (a page refresh)."""
        return self.store.entries(None, self.split), self.store.withdrawals()

    def configs(self) -> list[str]:
        """Configs with references in the dataset or entries in the store, in registry order."""
        names = set(available_configs(self.dataset)) | {e.config for e in self.entries()}
        order = {name: i for i, name in enumerate(CONFIGS)}
        return sorted(names, key=lambda n: (order.get(n.split("-")[0], len(order)), n))

    def submittable_configs(self) -> list[str]:
        return [c for c in self.configs() if c in set(available_configs(self.dataset))]

    def table(self, config: str, entries: list[Entry] | None = None):
        import pandas as pd

        entries = self.entries(config) if entries is None else entries
        by_short = {e.short_id: e for e in entries}
        rows = []
        for row in board_rows(entries):
            entry = by_short[row["id"]]
            row.update(method=method_cell(entry), authors=visible(entry.authors))
            rows.append(row)
        return pd.DataFrame(rows, columns=COLUMNS)

    def overview(self, configs: list[str] | None = None, ranked: list[Entry] | None = None):
        """Every config's ranked entries: rank, standard-split numbers and the paper protocol's means."""
        import pandas as pd

        ranked = self.entries() if ranked is None else ranked
        rows = []
        for config in configs or self.configs():
            for rank, e in enumerate(rank_entries(e for e in ranked if e.config == config), start=1):
                rows.append([config, rank, method_cell(e), "reference" if e.reference else "submission",
                             format_metric("mae", e.mae), e.mean_text("mae"),
                             format_metric("accuracy", e.accuracy), e.mean_text("accuracy")])
        return pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)

    def history(self, stored: tuple[list[Entry], list[Withdrawal]] | None = None):
        """Every entry ever stored on the view's split, newest first, withdrawn ones with date and reason."""
        import pandas as pd

        entries, withdrawals = self.read() if stored is None else stored
        withdrawn = {w.entry_id: w for w in withdrawals}
        rows = []
        for e in sorted(entries, key=lambda e: e.time, reverse=True):
            w = withdrawn.get(e.id)
            status = f"withdrawn {w.date}: {visible(w.reason)}" if w else "ranked"
            rows.append([e.date, e.config, method_cell(e), format_metric("mae", e.mae), status, e.short_id])
        return pd.DataFrame(rows, columns=HISTORY_COLUMNS)

    @staticmethod
    def per_size(config: str, entries: list[Entry]):
        """Accuracy per true dataset size (standard split) of each ranked entry: rows of entries, columns of
        the config's sizes."""
        import pandas as pd

        ranked = rank_entries(entries)
        try:
            sizes = [float(s) for s in get_config(config).dataset_sizes]
        except UnknownConfigError:
            sizes = sorted({float(s) for e in ranked for s in e.metrics.get("per_size", {})})
        columns = ["method"] + [f"{s:g} image{'' if s == 1 else 's'}" for s in sizes]
        rows = []
        for e in ranked:
            by_size = {float(s): v for s, v in e.metrics.get("per_size", {}).items()}
            rows.append([method_cell(e)] + [format_metric("accuracy", by_size[s]["accuracy"]) if s in by_size else "-"
                                            for s in sizes])
        return pd.DataFrame(rows, columns=columns)

    @staticmethod
    def per_size_figure(config: str, entries: list[Entry]):
        from lora_wise.figures import plot_accuracy_per_size

        series = {f"{visible(e.method)} ({e.short_id})": {s: v["accuracy"] for s, v in e.metrics.get("per_size", {}).items()}
                  for e in rank_entries(entries)}
        return plot_accuracy_per_size(series, title=f"Accuracy per dataset size on {config} "
                                                    f"({PROTOCOL_LABELS['standard']})")

    @staticmethod
    def choices(entries: list[Entry]) -> list[tuple[str, str]]:
        return [(f"#{i} {visible(e.method)} ({e.short_id})", e.id)
                for i, e in enumerate(rank_entries(entries), start=1)]

    def confusion_figure(self, config: str, entry_id: str | None, entries: list[Entry] | None = None):
        from lora_wise.figures import plot_confusion_matrix

        entries = self.entries(config) if entries is None else entries
        chosen = next((e for e in entries if e.id == entry_id), None)
        if chosen is None:
            ranked = rank_entries(entries)
            if not ranked:
                return None
            chosen = ranked[0]
        cm = chosen.metrics["confusion_matrix"]
        return plot_confusion_matrix(cm["labels"], cm["matrix"],
                                     title=f"{visible(chosen.method)} ({chosen.short_id})\n"
                                           f"{config}, {PROTOCOL_LABELS['standard']}")

    def overview_figure(self, ranked: list[Entry] | None = None):
        from lora_wise.figures import plot_metrics_by_method

        shown = [{"config": e.config, "method": visible(e.method), "mae": e.mae, "mape": e.mape,
                  "accuracy": e.accuracy} for e in (self.entries() if ranked is None else ranked)]
        return plot_metrics_by_method(shown, title=f"Best entry per method ({PROTOCOL_LABELS['standard']})")

    def describe(self, config: str) -> str:
        try:
            cfg = get_config(config)
        except UnknownConfigError:
            return f"### {_markdown_text(config)}"
        sizes = ", ".join(map(str, cfg.dataset_sizes))
        return (f"### {cfg.name}\n{cfg.description}  \nDataset sizes: {sizes}; rank {cfg.rank}; "
                f"backbone {cfg.backbone_name}; checkpoint step {cfg.checkpoint_step}.")

    def submit_upload(self, path: str | None, method: str, authors: str, link: str, config: str):
        """Run ``submit`` on an uploaded file; returns ``(ok, message)`` for the page."""
        if not path:
            return False, "No file uploaded: choose a predictions file (CSV or JSONL) or a results record first."
        try:
            result = submit(path, method=method, authors=authors, link=link, config=config or None,
                            split=self.split, dataset=self.dataset, store=self.store, name=Path(path).name)
        except LoRAWiSEError as exc:  # a bad file, a store or Hub that refuses: said in the page
            return False, str(exc)
        e = result.entry
        return True, (f"Stored {visible(e.method)!r} as entry {e.short_id} ({e.n_models} test models).\n"
                      f"{format_scores(e)}\n"
                      f"Rank {result.rank} of {result.total} on {e.config} (by the {PROTOCOL_LABELS['standard']}'s MAE).")


def status_html(ok: bool, message: str) -> str:
    kind, head = ("lb-ok", "Submitted.") if ok else ("lb-error", "Not stored:")
    return (f'<div class="{kind}"><strong>{head}</strong>'
            f'<pre style="white-space: pre-wrap; margin: 0.4em 0 0 0">{html.escape(message)}</pre></div>')


CSS = """
.lb-error { border-left: 4px solid #d33; padding: 0.5em 0.8em; background: #fdecec; color: #611; }
.lb-ok { border-left: 4px solid #2a2; padding: 0.5em 0.8em; background: #ecfdec; color: #141; }
"""

#: The upload form's config choice that takes the config from the file (a results record, or a `config` column).
FROM_FILE = ("from the file (a results record, or its `config` column)", "")


def build_app(store: Store | None = None, dataset: str | os.PathLike | None = None,
              configs: list[str] | None = None, split: str = DEFAULT_SPLIT):
    """The Gradio ``Blocks`` of the leaderboard (not launched).

    With ``$LORA_WISE_SEED_BASELINES=1`` the reference baselines of configs that have none are
    added to the store first (``baselines.seed_baselines``).
    """
    import gradio as gr

    view = LeaderboardView(store if store is not None else open_store(),
                           str(dataset) if dataset else default_dataset(), split)
    if seeding_requested():
        seed_baselines(view.dataset, view.store)
    tab_configs = list(configs) if configs else view.configs()
    submittable = view.submittable_configs()

    def board_table(value, elem_id, label, datatypes, widths=None):
        return gr.Dataframe(value=value, datatype=datatypes, interactive=False, elem_id=elem_id,
                            show_search="search", label=label, wrap=True, column_widths=widths)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(INTRO)
        tables, pickers, plots, size_tables, size_plots = {}, {}, {}, {}, {}
        with gr.Tabs():
            with gr.Tab("Overview", id="tab-overview", elem_id="tab-overview"):
                overview_table = board_table(view.overview(tab_configs), "overview-table",
                                             f"every config: rank and MAE / accuracy ({split} split)",
                                             ["str", "number", "html"] + ["str"] * 5)
                overview = gr.Plot(value=view.overview_figure(), format="png", show_label=False, elem_id="overview")
            for config in tab_configs:
                entries = view.entries(config)
                choices = view.choices(entries)
                with gr.Tab(config, id=f"tab-{config}", elem_id=f"tab-{config}"):
                    gr.Markdown(view.describe(config))
                    tables[config] = board_table(view.table(config, entries), f"board-{config}",
                                                 f"{config}: {split} split", DATATYPES, WIDTHS)
                    with gr.Row():
                        pickers[config] = gr.Dropdown(
                            choices=choices, value=choices[0][1] if choices else None, scale=1,
                            label=f"confusion matrix of entry ({PROTOCOL_LABELS['standard']})",
                            elem_id=f"entry-{config}")
                        plots[config] = gr.Plot(value=view.confusion_figure(config, None, entries), format="png",
                                                scale=2, show_label=False, elem_id=f"confusion-{config}")
                    sizes = view.per_size(config, entries)
                    size_tables[config] = board_table(
                        sizes, f"sizes-{config}", f"accuracy per true dataset size ({PROTOCOL_LABELS['standard']})",
                        ["html"] + ["str"] * (len(sizes.columns) - 1))
                    size_plots[config] = gr.Plot(value=view.per_size_figure(config, entries), format="png",
                                                 show_label=False, elem_id=f"sizes-plot-{config}")
                    pickers[config].change(lambda entry_id, c=config: view.confusion_figure(c, entry_id),
                                           inputs=pickers[config], outputs=plots[config])
            with gr.Tab("History", id="tab-history", elem_id="tab-history"):
                gr.Markdown("Every entry ever stored, newest first. Withdrawn entries left the ranking; "
                            "nothing is ever deleted (`lora-wise leaderboard withdraw ID --reason ...`).")
                history = board_table(view.history(), "history-table", f"history ({split} split)",
                                      ["str", "str", "html", "str", "str", "str"])
            with gr.Tab("Submit", id="tab-submit", elem_id="tab-submit"):
                gr.Markdown(SUBMIT_HELP)
                with gr.Row():
                    with gr.Column():
                        upload = gr.File(label="results record (JSON) or predictions (CSV or JSONL)",
                                         file_count="single", type="filepath", elem_id="submit-file")
                    with gr.Column():
                        method = gr.Textbox(label="method (required unless the file names it)", max_lines=1,
                                            elem_id="submit-method")
                        authors = gr.Textbox(label="authors", max_lines=1, elem_id="submit-authors")
                        link = gr.Textbox(label="link (paper or code, http(s)://...)", max_lines=1,
                                          elem_id="submit-link")
                        config_choice = gr.Dropdown(choices=[*submittable, FROM_FILE],
                                                    value=submittable[0] if submittable else "",
                                                    label="config", elem_id="submit-config")
                button = gr.Button("Submit", variant="primary", elem_id="submit-button")
                status = gr.HTML(elem_id="submit-status")
            with gr.Tab("About", id="tab-about", elem_id="tab-about"):
                gr.Markdown(ABOUT)
                gr.Code(value=BIBTEX, language=None, label="BibTeX", interactive=False, buttons=["copy"],
                        elem_id="about-bibtex")

        def refresh():
            stored = view.read()  # one read of the store for the whole page (a Hub store: a few requests)
            ranked = active(*stored)
            out = []
            for config in tab_configs:
                entries = [e for e in ranked if e.config == config]
                choices = view.choices(entries)
                out += [view.table(config, entries),
                        gr.update(choices=choices, value=choices[0][1] if choices else None),
                        view.confusion_figure(config, None, entries),
                        view.per_size(config, entries), view.per_size_figure(config, entries)]
            return out + [view.overview(tab_configs, ranked), view.overview_figure(ranked), view.history(stored)]

        board_outputs = [c for config in tab_configs for c in (tables[config], pickers[config], plots[config],
                                                                size_tables[config], size_plots[config])]
        board_outputs += [overview_table, overview, history]

        def on_submit(path, method_name, authors_text, link_text, config):
            ok, message = view.submit_upload(path, method_name, authors_text, link_text, config)
            if not ok:
                return [status_html(False, message)] + [gr.skip()] * len(board_outputs)
            return [status_html(True, message)] + refresh()

        button.click(on_submit, inputs=[upload, method, authors, link, config_choice],
                     outputs=[status] + board_outputs)
        demo.load(refresh, outputs=board_outputs)
    return demo


def launch(demo=None, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    """Launch the app with the leaderboard's upload limit and styling."""
    demo = demo if demo is not None else build_app()
    return demo.launch(server_name=host, server_port=port, css=CSS, max_file_size=MAX_BYTES + 2**20,
                       footer_links=["api", "gradio"], **kwargs)


def launch_from_environment(demo=None):
    """Launch as a Space does: on ``$GRADIO_SERVER_NAME`` (default 0.0.0.0), ``$GRADIO_SERVER_PORT`` (7860)."""
    return launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                  port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


def __getattr__(name: str):
    if name == "demo":  # `gradio app.py` and Spaces look for a module-level `demo`
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    launch_from_environment(build_app())
