"""What every command family shares to declare its sub-commands: the help formatter and ``add_command``."""

from __future__ import annotations

import argparse
import textwrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep our paragraphs; show an option's default where it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or isinstance(action, argparse._HelpAction)):
            return text
        return text + " (default: %(default)s)"


def add_command(commands, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command parser with the shared formatter."""
    return commands.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


def paragraph(text: str) -> str:
    """A long description wrapped for the terminal."""
    return textwrap.fill(text, width=88)
