"""``lora-wise predict``: how many images fine-tuned a LoRA file, by :mod:`lora_wise.estimate`."""

from __future__ import annotations

import sys
import warnings

from .. import jsonio
from ..baselines import BASELINES
from .parser import add_command, paragraph


def register(commands) -> None:
    p = add_command(
        commands, "predict", "estimate how many images fine-tuned a LoRA file",
        paragraph("Fit a baseline on every reference model of CONFIG and estimate the dataset size of each LoRA file "
        "(safetensors in PEFT, diffusers or kohya naming; pickle files are refused). Prints the estimate, how "
        "the layer-wise classifiers voted, the nearest reference models and the vote share. A LoRA that does "
        "not match the references (layers, shapes, rank) is an error naming what differs."))
    p.add_argument("loras", nargs="+", metavar="LORA", help=".safetensors file or a folder holding one")
    p.add_argument("--reference", required=True, metavar="DATASET",
                   help="LoRA-WiSE folder or Hub id holding reference models of the LoRA's backbone and rank")
    p.add_argument("--config", required=True, help="config of the references (see `lora-wise configs`)")
    p.add_argument("--method", choices=list(BASELINES), default="dsire", help="baseline to fit")
    p.add_argument("--k", type=int, default=1, help="neighbours per classifier")
    p.add_argument("--matrices", default="all", help="A, B, BA, A+B, ... or all")
    p.add_argument("--allow-partial", action="store_true",
                   help="when layers differ, estimate from the common layers (with a warning) instead of failing")
    p.add_argument("--top", type=int, default=5, help="nearest reference models to list")
    p.add_argument("--json", action="store_true",
                   help="print JSON (an object for one LoRA, a list for several)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from ..estimate import DatasetSizeEstimator, EstimateWarning
    from ..lora import read_lora

    loras = [(path, read_lora(path)) for path in args.loras]  # fail fast, before reading the references
    estimator = DatasetSizeEstimator.from_reference(args.reference, args.config, args.method, progress=True,
                                                    k=args.k, matrices=args.matrices)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimateWarning)  # printed below, once
        for path, weights in loras:
            results.append(estimator.estimate(weights, allow_partial=args.allow_partial, name=path))
    for result in results:
        for note in result.warnings:
            print(f"warning: {result.source}: {note}", file=sys.stderr)
    if args.json:
        payload = [r.to_dict() for r in results]
        print(jsonio.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        print("\n\n".join(r.format(top=args.top) for r in results))
    return 0
