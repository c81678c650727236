"""The LoRA-WiSE leaderboard as a Gradio app; runs as a Hugging Face Space from this file.

One tab per config (those the reference dataset holds, and any with entries): a
sortable ranked table (method, authors, MAE, MAPE, accuracy, date, reference or
submission) and the confusion matrix of a chosen entry; a tab with MAE, MAPE and
accuracy per config and method; and an upload form that calls ``scoring.submit`` --
the same validation as ``lora-wise submit`` -- and shows its error in the page.

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

from lora_wise.configs import CONFIGS, get_config
from lora_wise.errors import LoRAWiSEError, UnknownConfigError
from lora_wise.metrics.dataset_size_recovery.scores import for_display

from .baselines import seed_baselines, seeding_requested
from .entries import Entry, board_rows, rank_entries
from .references import DEFAULT_SPLIT, available_configs, default_dataset
from .scoring import submit
from .store import Store, open_store
from .submission import MAX_BYTES, MAX_ROWS

TITLE = "LoRA-WiSE leaderboard"
INTRO = """\
# LoRA-WiSE leaderboard

**Dataset size recovery from LoRA weights**: given a LoRA fine-tune of a text-to-image model, predict
how many images it was fine-tuned on ([Salama et al., 2024](https://arxiv.org/abs/2406.19395)).
Entries are scored on the **test split of the standard split** of each config with the
`dataset_size_recovery` metric and ranked by MAE (then MAPE, then date). Reference rows are the
paper's baselines (DSiRe, Frobenius-NN) run by `lora-wise leaderboard add-baselines`.
Sort by any column from the ⋮ menu of its header; search filters the rows.
"""
SUBMIT_HELP = f"""\
Upload a **CSV** with a header `model_id,prediction` (or **JSON Lines**, one
`{{"model_id": ..., "prediction": ...}}` per line) with one prediction for **every model of the test
split** of the chosen config: a finite positive number of images, each model once. Optional columns
`method`, `authors`, `link`, `config`, `split` must agree with the form. At most {MAX_BYTES // 2**20} MB and
{MAX_ROWS:,} rows. The command line does the same: `lora-wise submit predictions.csv --config CONFIG --method NAME`.
"""
#: Every entry predicts every model of its split, so the model count is not a column.
COLUMNS = ["rank", "method", "authors", "MAE", "MAPE (%)", "accuracy (%)", "date", "kind", "id"]
DATATYPES = ["number", "markdown", "str", "number", "number", "number", "str", "str", "str"]
WIDTHS = ["6%", "21%", "18%", "8%", "9%", "10%", "11%", "9%", "8%"]


def _markdown_text(text: str) -> str:
    """Escape Markdown so a method name shows as typed."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|<>" else ch for ch in text)


class LeaderboardView:
    """What the page shows, computed from the store (the callbacks of the app)."""

    def __init__(self, store: Store, dataset: str, split: str = DEFAULT_SPLIT):
        self.store, self.dataset, self.split = store, dataset, split

    def entries(self, config: str | None = None) -> list[Entry]:
        return self.store.entries(config, self.split)

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
        rows = board_rows(entries)
        by_short = {e.short_id: e for e in entries}
        for row in rows:
            entry = by_short[row["id"]]
            name = _markdown_text(entry.method)
            row["method"] = f"[{name}]({entry.link})" if entry.link else name
        return pd.DataFrame(rows, columns=COLUMNS)

    @staticmethod
    def choices(entries: list[Entry]) -> list[tuple[str, str]]:
        return [(f"#{i} {e.method} ({e.short_id})", e.id) for i, e in enumerate(rank_entries(entries), start=1)]

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
                                     title=f"{chosen.method} on {config} ({chosen.short_id})")

    def overview_figure(self):
        from lora_wise.figures import plot_metrics_by_method

        return plot_metrics_by_method(self.entries(), title=f"Best entry per method ({self.split} split)")

    def describe(self, config: str) -> str:
        try:
            cfg = get_config(config)
        except UnknownConfigError:
            return f"### {config}"
        sizes = ", ".join(map(str, cfg.dataset_sizes))
        return (f"### {cfg.name}\n{cfg.description}  \nDataset sizes: {sizes}; rank {cfg.rank}; "
                f"backbone {cfg.backbone_name}; checkpoint step {cfg.checkpoint_step}.")

    def submit_upload(self, path: str | None, method: str, authors: str, link: str, config: str):
        """Run ``submit`` on an uploaded file; returns ``(ok, message)`` for the page."""
        if not path:
            return False, "No file uploaded: choose a CSV or JSONL predictions file first."
        try:
            result = submit(path, method=method, authors=authors, link=link, config=config, split=self.split,
                            dataset=self.dataset, store=self.store, name=Path(path).name)
        except LoRAWiSEError as exc:  # a bad file, a store or Hub that refuses: said in the page
            return False, str(exc)
        e = result.entry
        return True, (f"Stored {e.method!r} as entry {e.short_id}: MAE {e.mae:.3f}, "
                      f"MAPE {for_display('mape', e.mape):.2f}%, accuracy {for_display('accuracy', e.accuracy):.2f}% "
                      f"on {e.n_models} models. "
                      f"Rank {result.rank} of {result.total} on {e.config}.")


def status_html(ok: bool, message: str) -> str:
    kind, head = ("lb-ok", "Submitted.") if ok else ("lb-error", "Not stored:")
    return (f'<div class="{kind}"><strong>{head}</strong>'
            f'<pre style="white-space: pre-wrap; margin: 0.4em 0 0 0">{html.escape(message)}</pre></div>')


CSS = """
.lb-error { border-left: 4px solid #d33; padding: 0.5em 0.8em; background: #fdecec; color: #611; }
.lb-ok { border-left: 4px solid #2a2; padding: 0.5em 0.8em; background: #ecfdec; color: #141; }
"""


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

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(INTRO)
        tables, pickers, plots = {}, {}, {}
        with gr.Tabs():
            for config in tab_configs:
                entries = view.entries(config)
                choices = view.choices(entries)
                with gr.Tab(config, id=f"tab-{config}", elem_id=f"tab-{config}"):
                    gr.Markdown(view.describe(config))
                    tables[config] = gr.Dataframe(
                        value=view.table(config, entries), headers=COLUMNS, datatype=DATATYPES,
                        interactive=False, elem_id=f"board-{config}", show_search="search",
                        label=f"{config}: {split} split", wrap=True, column_widths=WIDTHS)
                    with gr.Row():
                        pickers[config] = gr.Dropdown(
                            choices=choices, value=choices[0][1] if choices else None, scale=1,
                            label="confusion matrix of entry", elem_id=f"entry-{config}")
                        plots[config] = gr.Plot(value=view.confusion_figure(config, None, entries), format="png",
                                                scale=2, show_label=False, elem_id=f"confusion-{config}")
                    pickers[config].change(lambda entry_id, c=config: view.confusion_figure(c, entry_id),
                                           inputs=pickers[config], outputs=plots[config])
            with gr.Tab("Figures", id="tab-figures", elem_id="tab-figures"):
                overview = gr.Plot(value=view.overview_figure(), format="png", show_label=False, elem_id="overview")
            with gr.Tab("Submit", id="tab-submit", elem_id="tab-submit"):
                gr.Markdown(SUBMIT_HELP)
                with gr.Row():
                    with gr.Column():
                        upload = gr.File(label="predictions (CSV or JSONL)", file_count="single", type="filepath",
                                         elem_id="submit-file")
                    with gr.Column():
                        method = gr.Textbox(label="method (required)", max_lines=1, elem_id="submit-method")
                        authors = gr.Textbox(label="authors", max_lines=1, elem_id="submit-authors")
                        link = gr.Textbox(label="link (paper or code, http(s)://...)", max_lines=1,
                                          elem_id="submit-link")
                        config_choice = gr.Dropdown(choices=submittable, value=submittable[0] if submittable else None,
                                                    label="config", elem_id="submit-config")
                button = gr.Button("Submit", variant="primary", elem_id="submit-button")
                status = gr.HTML(elem_id="submit-status")

        def refresh():
            out = []
            for config in tab_configs:
                entries = view.entries(config)
                choices = view.choices(entries)
                out += [view.table(config, entries),
                        gr.update(choices=choices, value=choices[0][1] if choices else None),
                        view.confusion_figure(config, None, entries)]
            return out + [view.overview_figure()]

        board_outputs = [c for config in tab_configs for c in (tables[config], pickers[config], plots[config])]
        board_outputs.append(overview)

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
