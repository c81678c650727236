"""``lora-wise submit`` and ``lora-wise leaderboard {show,serve,add-baselines,deploy}``.

Argument parsing and printing only; every handler calls one function of
:mod:`lora_wise.leaderboard` (``scoring.submit``, ``store.open_store().entries``, ``app.launch``,
``baselines.add_baselines``, ``space.deploy_space``).
"""

from __future__ import annotations

import json

from ..leaderboard.baselines import SEED_ENV
from ..leaderboard.references import DATASET_ENV, DEFAULT_DATASET
from ..leaderboard.store import DB_ENV, REPO_ENV
from ..leaderboard.submission import MAX_BYTES, MAX_ROWS
from .parser import add_command

SUBMIT_DESCRIPTION = f"""\
Validate a predictions file, score it against the true dataset sizes of one split of
one config with the dataset_size_recovery metric, store it on the leaderboard and
print its rank. The file is CSV with a header `model_id,prediction` (or JSON Lines
with those fields), one row for every model of the split. Nothing is stored when
anything is wrong. Limits: {MAX_BYTES // 2**20} MB, {MAX_ROWS:,} rows."""

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
    p.add_argument("predictions", metavar="PRED", help="CSV or JSONL file of model_id,prediction")
    p.add_argument("--config", required=True,
                   help=("config name or alias (see `lora-wise configs`)"))
    p.add_argument("--split", default=None,
                   help="split the predictions are for: test (ranked) or train (default: the file's `split` "
                        "column, else test)")
    p.add_argument("--method", help=("method name shown on the leaderboard (required unless "
                                                      "the file has a `method` column)"))
    p.add_argument("--authors", help=("who made the method"))
    p.add_argument("--link", help=("http(s) link to the paper or code"))
    _add_dataset_option(p)
    _add_store_options(p)
    p.add_argument("--json", action="store_true", help="print the stored entry's metrics as JSON")
    p.set_defaults(func=_cmd_submit)

    board = add_command(commands, "leaderboard", "show, serve, seed or deploy the leaderboard")
    sub = board.add_subparsers(dest="leaderboard_command", metavar="ACTION", title="actions", required=True)

    p = add_command(sub, "show", "print the ranked entries of each config (or one)")
    p.add_argument("--config", help=("only this config (name or alias); default: all"))
    p.add_argument("--split", default="test", help="split to rank")
    _add_store_options(p)
    p.add_argument("--json", action="store_true", help="print the entries as JSON (without predictions)")
    p.set_defaults(func=_cmd_show)

    p = add_command(sub, "serve", "launch the leaderboard web app (Gradio) locally")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to share on the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    _add_dataset_option(p)
    _add_store_options(p)
    p.set_defaults(func=_cmd_serve)

    p = add_command(sub, "add-baselines", "score DSiRe and Frobenius-NN on the standard split and store them",
                    "Fit the two reference baselines on the train micro-datasets of the standard split of "
                    "each config of DATASET, predict its test models and submit the predictions as "
                    "reference entries (identical entries already stored are skipped).")
    p.add_argument("dataset", metavar="DATASET", help="LoRA-WiSE folder or Hub repo id")
    p.add_argument("--config", nargs="+",
                   help=("only these configs (default: every config of DATASET)"))
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


def _cmd_submit(args) -> int:
    from ..leaderboard.scoring import submit

    result = submit(args.predictions, method=args.method, config=args.config, split=args.split,
                    authors=args.authors, link=args.link, dataset=args.dataset, store=_store(args))
    if args.json:
        e = result.entry
        print(json.dumps({"id": e.id, "method": e.method, "config": e.config, "split": e.split,
                          "rank": result.rank, "total": result.total, "sha256": e.sha256,
                          "metrics": e.metrics, "store": result.store}, indent=2))
    else:
        print(result.format())
    return 0


def _cmd_show(args) -> int:
    from ..leaderboard.entries import format_board, rank_entries
    from ..leaderboard.references import resolve_config, resolve_split

    config = resolve_config(args.config) if args.config else None
    split = resolve_split(args.split)
    store = _store(args)
    entries = store.entries(config, split)
    if args.json:
        print(json.dumps([{k: v for k, v in e.to_dict().items() if k != "predictions"}
                          for e in rank_entries(entries)], indent=2))
        return 0
    configs = [config] if config else sorted({e.config for e in entries})
    if not configs:
        print(f"no {split} entries in {store.location} yet: `lora-wise submit` adds one")
    blocks = [format_board([e for e in entries if e.config == c], f"{c} ({split} split)") for c in configs]
    print("\n\n".join(blocks))
    return 0


def _cmd_serve(args) -> int:
    from ..leaderboard.app import build_app, launch

    launch(build_app(store=_store(args), dataset=args.dataset), host=args.host, port=args.port)
    return 0


def _cmd_add_baselines(args) -> int:
    from ..leaderboard.baselines import add_baselines

    added = add_baselines(args.dataset, configs=args.config, store=_store(args), progress=True)
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
