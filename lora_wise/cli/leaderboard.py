"""``lora-wise submit`` and ``lora-wise leaderboard {show,withdraw,serve,add-baselines,deploy}``.

Argument parsing and printing only; every handler calls one function of
:mod:`lora_wise.leaderboard` (``scoring.submit``, ``store.open_store().entries``, ``store.withdraw``,
``app.launch``, ``baselines.add_baselines``, ``space.deploy_space``).
"""

from __future__ import annotations

from .. import jsonio
from ..leaderboard.baselines import SEED_ENV
from ..leaderboard.entries import MAX_PREDICTION
from ..leaderboard.references import DATASET_ENV, DEFAULT_DATASET
from ..leaderboard.store import DB_ENV, REPO_ENV
from ..leaderboard.submission import MAX_BYTES, MAX_ROWS
from ..results import PROTOCOLS
from ..text import MAX_LENGTH
from .parser import add_command, paragraph

SUBMIT_DESCRIPTION = f"""\
Validate a predictions file or a results record, score it against the true dataset sizes
of one config with the dataset_size_recovery metric, store it on the leaderboard and
print its rank.

A predictions file is CSV with a header `model_id,prediction` (or JSON Lines with those
fields), one row for every model of the split (--config needed). A results record is the
JSON `lora-wise evaluate --out results.json` writes: its config and method come from it,
and every draw's metrics are recomputed from its predictions against the leaderboard's
references and splits; the board shows the standard split's score and the 10-draw mean.

A prediction is a number of images: finite, positive, at most {MAX_PREDICTION:,.0f}. The method
(up to {MAX_LENGTH['method']} characters) and authors are one line of visible text (no control, escape,
bidi or format characters); the link is an absolute, percent-encoded http(s) URL without
credentials. The same predictions for the same config are refused as a duplicate.
Nothing is stored when anything is wrong. Limits: {MAX_BYTES // 2**20} MB, {MAX_ROWS:,} rows."""

DEPLOY_DESCRIPTION = f"""\
Write a self-contained Gradio Space (app.py; a README.md card for the gradio installed
here; requirements.txt pinned to the versions installed here; a copy of the lora_wise
package as far as the app imports it), create the Space repo if needed, set its variables
${DATASET_ENV}, ${REPO_ENV} and ${SEED_ENV}=1
(the Space adds the reference baselines of configs that have none when it starts) and
upload the folder with huggingface_hub. The token comes from HF_TOKEN or `hf auth login`
and is never printed; the Space needs its own HF_TOKEN secret that can write to the
results repo."""


def _add_store_options(p) -> None:
    p.add_argument("--db", metavar="PATH", help=(f"SQLite leaderboard file (default ${DB_ENV} or "
                                                                  f"<cache>/leaderboard/leaderboard.sqlite)"))
    p.add_argument("--results-repo", metavar="REPO", help=(
        f"keep results in this Hub dataset repo instead (default ${REPO_ENV} when set)"))


def _add_dataset_option(p) -> None:
    p.add_argument("--dataset", default=None, help=(
        f"LoRA-WiSE folder or Hub repo id holding the references (default ${DATASET_ENV} or {DEFAULT_DATASET!r})"))


def register(commands) -> None:
    p = add_command(commands, "submit", "score a predictions file and add it to the leaderboard", SUBMIT_DESCRIPTION)
    p.add_argument("predictions", metavar="FILE", help="CSV or JSONL file of model_id,prediction, or a results "
                                                       "record (JSON) of `lora-wise evaluate`")
    p.add_argument("--config", help=("config name or alias (see `lora-wise configs`); required for a "
                                     "predictions file, read from a results record"))
    p.add_argument("--split", default=None,
                   help="split the predictions are for: test (ranked) or train (default: the file's `split` "
                        "column, else test)")
    p.add_argument("--method", help=("method name shown on the leaderboard (required unless "
                                     "the file has a `method` column or is a results record)"))
    p.add_argument("--authors", help=("who made the method"))
    p.add_argument("--link", help=("http(s) link to the paper or code"))
    _add_dataset_option(p)
    _add_store_options(p)
    p.add_argument("--json", action="store_true", help="print the stored entry's metrics as JSON")
    p.set_defaults(func=_cmd_submit)

    board = add_command(commands, "leaderboard", "show, serve, seed or deploy the leaderboard")
    sub = board.add_subparsers(dest="leaderboard_command", metavar="ACTION", title="actions", required=True)

    p = add_command(sub, "show", "print the ranked entries of each config (or one)", paragraph(
                    "Print the ranked entries of each config: the standard split's MAE, MAPE and accuracy "
                    "(the ranking) and, for results records, the paper protocol's 10-draw mean. Names are "
                    "shown as text: control, escape and bidi characters of older rows appear as visible "
                    "escapes (\\x1b, \\u202e)."))
    p.add_argument("--config", help=("only this config (name or alias); default: all"))
    p.add_argument("--split", default="test", help="split to rank")
    p.add_argument("--all", action="store_true", help="the history: withdrawn entries too, after the ranking, "
                                                      "with their withdrawal date and reason")
    _add_store_options(p)
    p.add_argument("--json", action="store_true", help="print the entries as JSON (without predictions)")
    p.set_defaults(func=_cmd_show)

    p = add_command(sub, "withdraw", "take an entry out of the ranking (it stays in the history)", paragraph(
                    "Append a withdrawal record for entry ID (the id `leaderboard show` prints, or the full "
                    "one) to the store: the entry leaves the ranking and stays in the history "
                    "(`leaderboard show --all`). Nothing is deleted or changed; a withdrawal is final. The "
                    f"reason (up to {MAX_LENGTH['reason']} characters) follows the character policy of names."))
    p.add_argument("entry_id", metavar="ID", help="entry id, or its first 8 or more characters")
    p.add_argument("--reason", required=True, help="why the entry is withdrawn (shown in the history)")
    _add_store_options(p)
    p.set_defaults(func=_cmd_withdraw)

    p = add_command(sub, "serve", "launch the leaderboard web app (Gradio) locally")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to share on the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    _add_dataset_option(p)
    _add_store_options(p)
    p.set_defaults(func=_cmd_serve)

    p = add_command(sub, "add-baselines", "score DSiRe and Frobenius-NN on the standard split and store them",
                    "Run the two reference baselines under the paper protocol on each config of DATASET "
                    "(fit on the train micro-datasets of each draw, predict its test models) and submit "
                    "them as reference entries (identical entries already ranked are skipped).")
    p.add_argument("dataset", metavar="DATASET", help="LoRA-WiSE folder or Hub repo id")
    p.add_argument("--config", nargs="+",
                   help=("only these configs (default: every config of DATASET)"))
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="paper",
                   help="paper: 10 draws, the board shows their mean too; standard: the standard split only")
    _add_store_options(p)
    p.set_defaults(func=_cmd_add_baselines)

    p = add_command(sub, "deploy", "assemble the leaderboard as a Gradio Space and upload it to the Hub",
                    DEPLOY_DESCRIPTION)
    p.add_argument("space_id", metavar="SPACE_ID", help="Space repo, <user or org>/<name>")
    p.add_argument("--dataset", required=True, metavar="REPO",
                   help="Hub dataset repo holding the benchmark (the references), e.g. `lora-wise push` output")
    p.add_argument("--results-repo", required=True, metavar="REPO",
                   help="Hub dataset repo that keeps the entries (created on the first one)")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.add_argument("--dry-run", action="store_true", help="assemble and list what would be uploaded; touch "
                                                          "no network")
    p.add_argument("--out", metavar="DIR", help="assemble the Space in DIR and keep it (default: a temporary "
                                                "folder, removed afterwards)")
    p.set_defaults(func=_cmd_deploy)


def _store(args):
    from ..leaderboard.store import open_store

    return open_store(db=args.db, repo=args.results_repo)


def _entry_json(entry, withdrawal=None) -> dict:
    """An entry for ``--json`` outputs: everything but the predictions, with its standing."""
    out = {k: v for k, v in entry.to_dict().items() if k != "predictions"}
    out["draws"] = [{k: v for k, v in d.items() if k != "predictions"} for d in entry.draws]
    out["summary"] = entry.summary()
    out["withdrawn"] = withdrawal.to_dict() if withdrawal is not None else None
    return out


def _cmd_submit(args) -> int:
    from ..leaderboard.scoring import submit

    result = submit(args.predictions, method=args.method, config=args.config, split=args.split,
                    authors=args.authors, link=args.link, dataset=args.dataset, store=_store(args))
    if args.json:
        print(jsonio.dumps({**_entry_json(result.entry), "rank": result.rank, "total": result.total,
                            "store": result.store}, indent=2))
    else:
        print(result.format())
    return 0


def _cmd_show(args) -> int:
    from ..leaderboard.entries import active, format_board, rank_entries
    from ..leaderboard.references import resolve_config, resolve_split

    config = resolve_config(args.config) if args.config else None
    split = resolve_split(args.split)
    store = _store(args)
    entries = store.entries(config, split)
    withdrawals = store.withdrawals(config)
    ranked = rank_entries(active(entries, withdrawals))
    if args.json:
        by_entry = {w.entry_id: w for w in withdrawals}
        shown = ranked + ([e for e in entries if e.id in by_entry] if args.all else [])
        print(jsonio.dumps([_entry_json(e, by_entry.get(e.id)) for e in shown], indent=2))
        return 0
    configs = [config] if config else sorted({e.config for e in (entries if args.all else ranked)})
    if not configs:
        print(f"no {split} entries in {store.location} yet: `lora-wise submit` adds one")
    blocks = [format_board([e for e in entries if e.config == c], f"{c} ({split} split)", withdrawals=withdrawals,
                           show_withdrawn=args.all) for c in configs]
    print("\n\n".join(blocks))
    return 0


def _cmd_withdraw(args) -> int:
    from ..leaderboard.store import withdraw
    from ..text import visible

    store = _store(args)
    entry, withdrawal = withdraw(store, args.entry_id, args.reason)
    print(f"withdrew entry {entry.short_id} ({visible(entry.method)} on {entry.config}/{entry.split}) on "
          f"{withdrawal.date} UTC in {store.location}; it stays in the history (`lora-wise leaderboard show --all`)")
    return 0


def _cmd_serve(args) -> int:
    from ..leaderboard.app import build_app, launch

    launch(build_app(store=_store(args), dataset=args.dataset), host=args.host, port=args.port)
    return 0


def _cmd_add_baselines(args) -> int:
    from ..leaderboard.baselines import add_baselines

    added = add_baselines(args.dataset, configs=args.config, store=_store(args), progress=True,
                          protocol=args.protocol)
    for result in added:
        print(result.format(), end="\n\n")
    print(f"added {len(added)} reference entries" + ("" if added else " (all were already stored)"))
    return 0


def _cmd_deploy(args) -> int:
    from ..leaderboard.space import deploy_space

    result = deploy_space(args.space_id, dataset=args.dataset, results_repo=args.results_repo,
                          private=args.private, dry_run=args.dry_run, out_dir=args.out)
    print(result.format())
    return 0
