"""``lora-wise demo``: the whole story on a CPU (:func:`lora_wise.demo.run_demo`)."""

from __future__ import annotations

import sys

from ..demo import DEFAULT_REPORT, run_demo
from ..protocol import PROTOCOLS
from .parser import add_command

DEMO_DESCRIPTION = """\
The whole story on a CPU: build every miniature config and the medium one again with
the paper's flip defense (900 models; the miniature backbone is pre-trained and cached
on first use; finished models are kept across runs), run DSiRe and Frobenius-NN under
the paper's 10-draw protocol, submit both to the local leaderboard, and write a
Markdown report that opens with the paper's findings on this build (each: the paper's
figure, ours, holds or not), then the paper's table and figures.  About 8 minutes on 2
cores with the backbone cached.
"""


def register(commands) -> None:
    p = add_command(commands, "demo", "build the miniature benchmark, run both baselines, score, fill the "
                    "leaderboard and write a report", DEMO_DESCRIPTION)
    p.add_argument("--out", default="lora-wise", help="dataset folder to build into (kept between runs)")
    p.add_argument("--report", default=DEFAULT_REPORT, help="folder for the report and its figures")
    p.add_argument("--config", action="append", metavar="NAME",
                   help="config to run (repeatable; default: every miniature config and mini_medium_r8-flip)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="paper",
                   help="standard: one draw; paper: the paper's 10 draws")
    p.add_argument("--db", metavar="PATH", help="leaderboard SQLite file (default: in the cache dir)")
    p.add_argument("--micro-datasets", type=int, metavar="N",
                   help="build only the first N micro-datasets of each config (a quicker, smaller demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    run_demo(out=args.out, report_dir=args.report, configs=args.config, protocol=args.protocol, db=args.db,
             micro_datasets=args.micro_datasets, progress=not args.no_progress,
             echo=lambda text: print(text, flush=True, file=sys.stdout))
    return 0
