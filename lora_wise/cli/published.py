"""``lora-wise import-official`` and ``export-official``: the published LoRA-WiSE release in and out."""

from __future__ import annotations

from ..errors import OptionError
from ..published import IMPORT_BATCH_ROWS, PUBLISHED_REPO, PUBLISHED_SUBSETS, export_official, import_official
from .parser import add_command, paragraph


def register(commands) -> None:
    p = add_command(
        commands, "import-official", "convert the published LoRA-WiSE (Hub or folder) into this layout",
        paragraph("Convert subsets of the published LoRA-WiSE (label, name and nested-list tensor columns, one `train` "
        f"split) into LoRA-WiSE's Hub layout with the standard train/test split, so `lora-wise baseline`, the "
        f"metric and the leaderboard run on the published models. SRC is a folder (README `configs:` YAML, or "
        f"<subset>/ or data/<subset>/ folders of Parquet files) or a Hub id such as {PUBLISHED_REPO}."))
    p.add_argument("src", metavar="SRC", help=f"published-layout folder or Hub dataset id ({PUBLISHED_REPO})")
    p.add_argument("out", metavar="OUT", help="LoRA-WiSE folder to write (created; other configs kept)")
    p.add_argument("--subset", action="append", metavar="NAME",
                   help=f"subset to import (repeatable; default: every subset found): {', '.join(PUBLISHED_SUBSETS)}")
    p.add_argument("--batch-rows", type=int, default=IMPORT_BATCH_ROWS,
                   help="rows converted per Arrow batch (memory grows with it)")
    p.set_defaults(func=_cmd_import)

    p = add_command(
        commands, "export-official", "write one config in the published LoRA-WiSE layout",
        paragraph("Write CONFIG of a LoRA-WiSE dataset (folder or Hub id) as the published release lays it out: "
        "OUT/data/<subset>/train-*.parquet with label, name and one nested-list column per LoRA tensor in the "
        "old diffusers naming, at the config's checkpoint, and OUT/README.md so load_dataset(OUT, subset) works."))
    p.add_argument("dataset", metavar="DATASET", help="LoRA-WiSE folder or Hub dataset id")
    p.add_argument("config", metavar="CONFIG", help="config name or alias (see `lora-wise configs`)")
    p.add_argument("out", metavar="OUT", help="folder to write (other subsets there are kept)")
    p.set_defaults(func=_cmd_export)


def _cmd_import(args) -> int:
    if args.batch_rows < 1:
        raise OptionError("--batch-rows must be at least 1")
    results = import_official(args.src, args.out, args.subset, batch_rows=args.batch_rows)
    for result in results:
        print(result.format())
    print(f"wrote {args.out}; run e.g. `lora-wise baseline dsire {args.out} {results[0].config}`")
    return 0


def _cmd_export(args) -> int:
    result = export_official(args.dataset, args.config, args.out)
    print(result.format())
    print(f"load it with `datasets.load_dataset({str(args.out)!r}, {result.subset!r})`")
    return 0
