"""The ``lora-wise`` command: parse arguments, call the library, print.

Each pipeline stage registers its own sub-commands (``builder.cli``,
``leaderboard.cli``, ``lora_wise.interop``, ``lora_wise.demo``); this module holds
the library's own (``configs``, ``baseline``) and the error
handling every command shares: a user error prints one ``error:`` line that
says what to do and exits with status 2, never a traceback (set
``LORA_WISE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from . import __version__

#: Modules with a ``register(subparsers)`` function, in the order of ``--help``.
COMMAND_MODULES = (
    "lora_wise.cli",
    "lora_wise.builder.cli",
    "lora_wise.interop",
    "lora_wise.leaderboard.cli",
    "lora_wise.demo",
)

DESCRIPTION = """\
LoRA-WiSE: recover how many images fine-tuned a LoRA, as a benchmark.

Build LoRA-WiSE snapshots (DreamBooth-LoRA with diffusers + PEFT), load them
from a folder or the Hub, run the DSiRe and Frobenius-NN baselines under the
paper's protocol, score predictions and keep a leaderboard.
"""

EPILOG = """\
examples:
  lora-wise demo                                        # the whole story on a CPU
  lora-wise configs                                     # what can be built and scored
  lora-wise build --config mini_low_r8 --out lora-wise  # fine-tune a miniature benchmark
  lora-wise baseline dsire lora-wise mini_low_r8 --protocol paper
  lora-wise submit predictions.csv --config mini_low_r8 --method my-method
  lora-wise predict my_lora.safetensors --reference lora-wise --config mini_low_r8

Caches (backbones, datasets, the local leaderboard) live in $LORA_WISE_CACHE
(default ~/.cache/lora-wise).
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep our paragraphs; show an option's default where it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or isinstance(action, argparse._HelpAction)):
            return text
        return text + " (default: %(default)s)"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'bad input', printed as one line rather than a traceback."""
    from .errors import LoRAWiSEError

    return (LoRAWiSEError, ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-wise", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lora-wise {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a stage not installed: its commands are simply absent
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register(commands)
    return parser


def add_command(commands, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command parser with the shared formatter (used by every stage's ``register``)."""
    return commands.add_parser(name, help=help, description=description or help,
                               formatter_class=HelpFormatter)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if os.environ.get("LORA_WISE_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- library commands

def register(commands) -> None:
    p = add_command(commands, "configs", "list every benchmark config with its sizes, backbone and rank")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_configs)

    p = add_command(commands, "baseline", "run a reference baseline on a dataset under the paper's protocol",
                    "Fit a baseline on the train micro-datasets and score it on the test ones, over the "
                    "standard split (the first seeded draw) or the paper's 10 draws; prints MAE, MAPE and "
                    "accuracy as mean ± std beside the paper's figure.")
    p.add_argument("method", choices=["dsire", "frobenius-nn", "nn-full-model"], help="the baseline")
    p.add_argument("dataset", help="a LoRA-WiSE folder (e.g. lora-wise) or a Hub dataset repo id")
    p.add_argument("config", help="config name or alias (see `lora-wise configs`)")
    p.add_argument("--protocol", choices=["standard", "paper"], default="standard",
                   help="standard: the first draw; paper: 10 successive draws")
    p.add_argument("--out", metavar="CSV", help="write the standard split's predictions here "
                                                "(model_id,prediction: the leaderboard's format)")
    p.add_argument("--step", default="checkpoint",
                   help="snapshot step to use ('checkpoint' is the config's default checkpoint)")
    p.add_argument("--k", type=int, default=1, help="neighbours per classifier")
    p.add_argument("--vote", choices=["majority", "average"], default="majority", help="how layers vote")
    p.add_argument("--matrices", default="all", help="A, B, BA, A+B, ... or all")
    p.add_argument("--classifier", choices=["knn", "lda", "ridge"], default="knn",
                   help="per-layer classifier (dsire only): knn, lda (GDA) or ridge")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_baseline)


def _cmd_configs(args) -> int:
    from .configs import iter_configs

    configs = [c.summary() for c in iter_configs()]
    if args.json:
        print(json.dumps(configs, indent=2))
        return 0
    header = f"{'config':<16}{'alias':<13}{'range':<8}{'sizes':<24}{'backbone':<10}{'rank':>5}{'models':>8}  source"
    print(header)
    print("-" * len(header))
    for c in configs:
        sizes = ",".join(map(str, c["sizes"]))
        print(f"{c['name']:<16}{','.join(c['aliases']) or '-':<13}{c['range']:<8}{sizes:<24}"
              f"{c['backbone']:<10}{c['rank']:>5}{c['models']:>8}  {c['source']}")
    return 0


def _parse_step(value: str):
    if value in ("checkpoint", "all"):
        return "checkpoint" if value == "checkpoint" else None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--step must be 'checkpoint' or a step number, not {value!r}") from None


def _cmd_baseline(args) -> int:
    from .data import feature_table
    from .protocol import run_protocol, write_predictions

    options = dict(k=args.k, matrices=args.matrices)
    if args.method != "nn-full-model":
        options["vote"] = args.vote
    if args.method == "dsire":
        options["classifier"] = args.classifier
    table = feature_table(args.dataset, args.config, step=_parse_step(args.step), progress=True)
    result = run_protocol(table, args.config, args.method, protocol=args.protocol, **options)
    if args.out:
        path = write_predictions(result.standard, args.out)
        print(f"wrote {len(result.standard.model_ids)} predictions of the standard split to {path}",
              file=sys.stderr)
    if args.json:
        paper = result.paper
        print(json.dumps({"method": result.method, "config": result.config.name, "protocol": result.protocol,
                          "params": result.params, "summary": result.summary(),
                          "draws": [d.metrics for d in result.draws],
                          "paper": None if paper is None else paper.__dict__}, indent=2))
    else:
        print(result.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
