"""The ``lora-wise`` command line: one module per command family, each declaring its sub-commands.

``main`` (the console script) parses the arguments, calls one library function and prints; the
command families are ``configs``, ``baseline``, ``evaluate``, ``build``, ``push``, ``published``
(``import-official``, ``export-official``), ``predict``, ``leaderboard`` (``submit``,
``leaderboard ...``) and ``demo``.  No logic lives here that the library lacks.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
