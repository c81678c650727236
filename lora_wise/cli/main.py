"""The ``lora-wise`` command: build the parser from the command families, run one, report errors.

An error the user can fix -- a :class:`~lora_wise.errors.LoRAWiSEError`, a failed Hub request
(:func:`lora_wise.hub.translate`), or an ``OSError`` of the environment such as a full disk
(:func:`lora_wise.errors.os_failure`) -- prints one ``error:`` line that says what to do and
exits with status 2.  Any other exception is a bug in lora-wise and shows its traceback
(``LORA_WISE_DEBUG=1`` shows the traceback of user errors too).  Ctrl-C prints ``interrupted``
and exits with 130, SIGTERM (``kill``, a batch system's time limit) ``terminated`` and 143, both
after the command's clean-up ran (a build removes its half-written files and stops its workers).  Output into a pipe that closes early (``lora-wise configs --json | head -n 1``)
ends quietly with status 141, 128 + SIGPIPE, as a shell reports for ``yes | head``.

Hub requests give up at once on a host a connection to has just failed
(:func:`lora_wise.hub.fail_fast_when_unreachable`), so an offline run fails in a second, not
after half a minute of retries.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from .. import __version__, hub
from ..errors import LoRAWiSEError, os_failure
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


#: The exit status of a command whose output pipe was closed: 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    hub.fail_fast_when_unreachable()
    try:
        with _terminate_as_interrupt():
            try:
                return _run(argv)
            finally:  # buffered output meets a closed pipe here, not at exit (also after --help's SystemExit)
                sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of this process's own (a worker's, a socket's) broke: a bug, or worth its traceback
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if _terminated:
            print("terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:
        action = f"run `lora-wise {args.command}`"
        error = exc if isinstance(exc, LoRAWiSEError) else hub.translate(exc, action) or os_failure(exc, action)
        if error is None or os.environ.get("LORA_WISE_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


_terminated: list[int] = []


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so ``finally`` blocks and context managers clean up.

    Only where SIGTERM has its default action (the command line, not a host that set its own handler).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        _terminated.append(signum)
        raise KeyboardInterrupt

    _terminated.clear()
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stdout_closed() -> bool:
    """Whether nobody reads this process's standard output any more (a pipe whose reader has gone)."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR is always reported: a pipe whose read end is closed
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file (a test's capture), or no poll here
        return True


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit finds nothing to complain about."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
