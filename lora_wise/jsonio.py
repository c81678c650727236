"""JSON as LoRA-WiSE writes and reads it: always valid JSON (RFC 8259), never ``NaN`` or ``Infinity``.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats and reads
them back, although no JSON parser elsewhere has to.  Everything the project writes as JSON --
``--json`` outputs, leaderboard entries in either store, results records, build manifests,
recipes, LoRA adapter metadata, the miniature backbone's files -- goes through :func:`dumps`, which refuses them (``allow_nan=False``: a non-finite number there is a bug, raised
as ``ValueError``) and writes numpy numbers as plain numbers.  :func:`loads` reads JSON a person
gave and refuses the same constants, so a file with ``NaN`` is an error instead of a number.
"""

from __future__ import annotations

import json


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists (anything else is a bug: TypeError)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(obj, *, indent: int | None = None, sort_keys: bool = False, compact: bool = False,
          ensure_ascii: bool = True) -> str:
    """``obj`` as valid JSON; ``compact`` drops the spaces after separators (canonical forms, hashes);
    ``ensure_ascii=False`` writes non-ASCII characters as themselves instead of ``\\u`` escapes."""
    separators = (",", ":") if compact else None
    return json.dumps(obj, allow_nan=False, indent=indent, sort_keys=sort_keys, separators=separators,
                      ensure_ascii=ensure_ascii, default=_plain)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; write a finite number")


def loads(text: str | bytes):
    """Parse JSON, refusing the non-standard ``NaN``, ``Infinity`` and ``-Infinity`` (``ValueError``)."""
    return json.loads(text, parse_constant=_no_constant)
