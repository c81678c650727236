"""The ``lora-wise`` command: build the parser from the command families, run one, report errors.

An error the user can fix -- a :class:`~lora_wise.errors.LoRAWiSEError`, or a failed Hub request,
which :mod:`lora_wise.hub` turns into one -- prints one ``error:`` line that says what to do and
exits with status 2.  Any other exception is a bug in lora-wise and shows its traceback
(``LORA_WISE_DEBUG=1`` shows the traceback of user errors too).
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__, hub
from ..errors import LoRAWiSEError
from . import baseline, build, configs, demo, evaluate, leaderboard, predict, published, push
from .parser import HelpFormatter

#: The command families, in the order of ``--help``; each module's ``register`` adds its sub-commands.
FAMILIES = (configs, baseline, evaluate, build, push, published, predict, leaderboard, demo)

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
  lora-wise evaluate my_method.py:MyMethod lora-wise mini_low_r8 --out results.json
  lora-wise submit predictions.csv --config mini_low_r8 --method my-method
  lora-wise predict my_lora.safetensors --reference lora-wise --config mini_low_r8

Caches (backbones, datasets, the local leaderboard) live in $LORA_WISE_CACHE
(default ~/.cache/lora-wise).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-wise", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lora-wise {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for family in FAMILIES:
        family.register(commands)
    return parser


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
    except Exception as exc:
        error = exc if isinstance(exc, LoRAWiSEError) else hub.translate(exc, f"run `lora-wise {args.command}`")
        if error is None or os.environ.get("LORA_WISE_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
