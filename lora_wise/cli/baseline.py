"""``lora-wise baseline``: a reference baseline on a dataset under the standard or the paper's protocol.

The baselines, their options and the protocols offered are those of the library's registries
(``lora_wise.baselines.BASELINES``, ``lora_wise.protocol.PROTOCOLS``); an option a baseline does
not take (``--vote`` for NN-full-model, ``--classifier`` for Frobenius-NN) is not passed to it.
"""

from __future__ import annotations

import sys

from .. import jsonio
from ..baselines import BASELINES, baseline_class
from ..baselines.layerwise import CLASSIFIERS, VOTES
from ..data import CHECKPOINT
from ..errors import OptionError
from ..protocol import PROTOCOLS
from .parser import add_command


def register(commands) -> None:
    p = add_command(commands, "baseline", "run a reference baseline on a dataset under the paper's protocol",
                    "Fit a baseline on the train micro-datasets and score it on the test ones, over the "
                    "standard split (the first seeded draw) or the paper's 10 draws; prints MAE, MAPE and "
                    "accuracy as mean ± std beside the paper's figure.")
    p.add_argument("method", choices=list(BASELINES), help="the baseline")
    p.add_argument("dataset", help="a LoRA-WiSE folder (e.g. lora-wise) or a Hub dataset repo id")
    p.add_argument("config", help="config name or alias (see `lora-wise configs`)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="standard",
                   help="standard: the first draw; paper: 10 successive draws")
    p.add_argument("--out", metavar="CSV", help="write the standard split's predictions here "
                                                "(model_id,prediction: the leaderboard's format)")
    p.add_argument("--step", default=CHECKPOINT,
                   help=f"snapshot step to use ('{CHECKPOINT}' is the config's default checkpoint)")
    p.add_argument("--k", type=int, default=1, help="neighbours per classifier")
    p.add_argument("--vote", choices=VOTES, default="majority", help="how layers vote")
    p.add_argument("--matrices", default="all", help="A, B, BA, A+B, ... or all")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="knn",
                   help="per-layer classifier (dsire only): knn, lda (GDA) or ridge")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_baseline)


def _parse_step(value: str):
    if value in (CHECKPOINT, "all"):
        return CHECKPOINT if value == CHECKPOINT else None
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"--step must be '{CHECKPOINT}' or a step number, not {value!r}") from None


def _cmd_baseline(args) -> int:
    from ..data import feature_table
    from ..protocol import run_protocol, write_predictions

    given = dict(k=args.k, matrices=args.matrices, vote=args.vote, classifier=args.classifier)
    options = {name: value for name, value in given.items() if name in baseline_class(args.method).options()}
    table = feature_table(args.dataset, args.config, step=_parse_step(args.step), progress=True)
    result = run_protocol(table, args.config, args.method, protocol=args.protocol, **options)
    if args.out:
        path = write_predictions(result.standard, args.out)
        print(f"wrote {len(result.standard.model_ids)} predictions of the standard split to {path}",
              file=sys.stderr)
    if args.json:
        paper = result.paper
        print(jsonio.dumps({"method": result.method, "config": result.config.name, "protocol": result.protocol,
                            "params": result.params, "summary": result.summary(),
                            "draws": [d.metrics for d in result.draws],
                            "paper": None if paper is None else paper.__dict__}, indent=2))
    else:
        print(result.format())
    return 0
