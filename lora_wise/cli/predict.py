"""``lora-wise predict``: how many images fine-tuned a LoRA file, by :mod:`lora_wise.estimate`."""

from __future__ import annotations

import sys
import warnings

from .. import jsonio
from ..baselines import BASELINES
from ..calibration import COVERAGE, FALSE_ALARM
from .parser import add_command, paragraph


def register(commands) -> None:
    p = add_command(
        commands, "predict", "estimate how many images fine-tuned a LoRA file",
        "\n\n".join([
            paragraph("Fit a baseline on every reference snapshot of CONFIG (all steps) and estimate the dataset "
                      "size of each LoRA file (safetensors in PEFT, diffusers or kohya naming, or a PEFT folder with "
                      "its adapter_config.json; pickle files are refused, every file's header is checked before "
                      "any tensor is read)."),
            paragraph("It prints two estimates, each with an interval that holds the true size with probability "
                      "--coverage, calibrated on the references by leaving one micro-dataset out (split "
                      "conformal): the classifier's estimate, a reference size -- right when the LoRA was "
                      "trained on one of the reference sizes, as in the benchmark -- and a continuous estimate "
                      "by regression of log n on the spectra, which can fall between them -- right when the size "
                      "may be any number, as for a LoRA from elsewhere.  It also prints how many steps it "
                      "estimates the LoRA was trained (the size is compared with the reference snapshots at the "
                      "nearest reference step), and whether the LoRA is in distribution: a LoRA trained longer or "
                      "shorter than every reference, or unlike every reference snapshot (another learning rate, "
                      "image domain or backbone version), is flagged, with the reason among the warnings; a LoRA "
                      "like them is flagged with probability --false-alarm.  Then how the layer-wise classifiers voted and the nearest reference "
                      "snapshots.  A LoRA that does not match the references (layers, shapes, rank) is an error "
                      "naming what differs."),
        ]))
    p.add_argument("loras", nargs="+", metavar="LORA", help=".safetensors file or a folder holding one")
    p.add_argument("--reference", required=True, metavar="DATASET",
                   help="LoRA-WiSE folder or Hub id holding reference models of the LoRA's backbone and rank")
    p.add_argument("--config", required=True, help="config of the references (see `lora-wise configs`)")
    p.add_argument("--method", choices=list(BASELINES), default="dsire", help="baseline to fit")
    p.add_argument("--k", type=int, default=1, help="neighbours per classifier")
    p.add_argument("--matrices", default="all", help="A, B, BA, A+B, ... or all")
    p.add_argument("--coverage", type=float, default=COVERAGE,
                   help="probability that an interval holds the true size, between 0 and 1")
    p.add_argument("--false-alarm", type=float, default=FALSE_ALARM,
                   help="rate at which a LoRA like the references is flagged out of distribution")
    p.add_argument("--allow-partial", action="store_true",
                   help="when layers differ, estimate from the common layers (with a warning) instead of failing")
    p.add_argument("--top", type=int, default=5, help="nearest reference snapshots to list")
    p.add_argument("--json", action="store_true",
                   help="print JSON (an object for one LoRA, a list for several): estimated_dataset_size and its "
                        "interval {low, high, coverage}, continuous_estimate {dataset_size, interval}, "
                        "estimated_training_steps, in_distribution, warnings, votes, neighbours")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from ..estimate import DatasetSizeEstimator, EstimateWarning
    from ..lora import read_lora

    loras = [(path, read_lora(path)) for path in args.loras]  # fail fast, before reading the references
    estimator = DatasetSizeEstimator.from_reference(args.reference, args.config, args.method, progress=True,
                                                    coverage=args.coverage, false_alarm=args.false_alarm,
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
