"""``lora-wise evaluate``: score any method (a class with fit/predict) under the paper's protocol; write its results record.

The same as ``lora_wise.evaluate(method, dataset, config, protocol=...)``; the method is
``FILE.py:Class``, ``module:Class`` or a built-in baseline's name (``lora_wise.baselines.BASELINES``).
"""

from __future__ import annotations

import json
import sys

from ..errors import OptionError
from ..results import PROTOCOLS
from .parser import add_command, paragraph


def register(commands) -> None:
    p = add_command(commands, "evaluate", "score your own method under the paper's protocol; write a results record",
                    paragraph("Load METHOD (a class with fit(train, sizes) and predict(test) over model sets; see "
                              "lora_wise.methods), fit it on the train micro-datasets of each draw and score its "
                              "predictions of the test ones: the paper's 10 draws (draw 0 is the standard split) or "
                              "the standard split alone. Prints MAE, MAPE and accuracy (mean ± std and the standard "
                              "split) and writes the results record (JSON: per-draw metrics and predictions, the "
                              "method and its parameters, package versions, the dataset's fingerprint, the date), "
                              "which `lora-wise submit results.json` sends to the leaderboard."))
    p.add_argument("method", metavar="METHOD", help="FILE.py:Class, module:Class, or a baseline (dsire, ...)")
    p.add_argument("dataset", help="a LoRA-WiSE folder (e.g. lora-wise) or a Hub dataset repo id")
    p.add_argument("config", help="config name or alias (see `lora-wise configs`)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="paper",
                   help="paper: 10 successive draws; standard: the first draw only")
    p.add_argument("--out", metavar="JSON", help="write the results record here (e.g. results.json)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a constructor argument of the method (V is read as JSON when it parses: k=3, "
                        "flag=true; else as text); repeat for several")
    p.add_argument("--name", help="the method's name in the record (default: its `name` attribute or class name)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=_cmd_evaluate)


def parse_params(items: list[str]) -> dict:
    """``["k=3", "vote=average"]`` -> ``{"k": 3, "vote": "average"}``."""
    params = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise OptionError(f"--param {item!r}: write NAME=VALUE, e.g. --param k=3")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _cmd_evaluate(args) -> int:
    from ..evaluation import evaluate
    from ..results import dumps, summary_table

    record = evaluate(args.method, args.dataset, args.config, protocol=args.protocol,
                      params=parse_params(args.param), name=args.name, out=args.out, progress=True)
    if args.json:
        sys.stdout.write(dumps(record))
    else:
        print(summary_table(record))
    if args.out:
        print(f"wrote the results record to {args.out}; `lora-wise submit {args.out}` sends it to the leaderboard",
              file=sys.stderr)
    return 0
