"""Text that people give LoRA-WiSE -- names, authors, links, reasons -- checked once and shown as text.

**The character policy** (one for the command line, the Python calls, the web form and every store):

* *Text* (a method name, authors, a withdrawal reason) is one line of Unicode, stripped of leading and
  trailing white space, at most :data:`MAX_LENGTH` characters for its field.  Refused: every character
  of Unicode category ``Cc`` (control characters: NUL, tab, newline, ESC and thus terminal escape
  sequences, DEL, C1 controls), ``Cf`` (format characters: the bidi embeddings, overrides and
  isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E/U+200F/U+061C, zero-width characters,
  soft hyphen, tag characters), ``Cs`` (lone surrogates), ``Co`` (private use), ``Cn`` (unassigned)
  and ``Zl``/``Zp`` (the line and paragraph separators U+2028, U+2029).  Everything else -- letters
  of every script, punctuation, symbols, emoji, ``$``, ``<``, ``*`` -- is kept exactly as typed and
  always *shown as text*: never read as Markdown, HTML, LaTeX/mathtext or a terminal command.
* A *link* is an absolute ``http://`` or ``https://`` URL of at most :data:`MAX_LENGTH` ``["link"]``
  characters, with a host name (or IP address) and no user name or password, written in printable
  ASCII with everything else percent-encoded (RFC 3986: letters, digits and ``-._~:/?#[]@!$&'()*+,;=``,
  and ``%`` followed by two hex digits).  Spaces, quotes, ``<``, ``>``, backslashes and non-ASCII
  characters must be percent-encoded; the error message shows the encoded form.

:func:`check_text` and :func:`check_link` apply the policy and raise
:class:`~lora_wise.errors.TextPolicyError` (a ``ValueError``) whose one line names the field, the
offending character (by code point and Unicode name) and the fix.  For text that was stored before
the policy (or comes from elsewhere), :func:`visible` shows every character the policy refuses as
a visible escape (``\\x1b``, ``\\u202e``), so a terminal never interprets it, and :func:`safe_link`
returns a link only when it passes the policy.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, urlsplit

from .errors import TextPolicyError

#: Longest text accepted per field, in characters (names and authors are shown in tables).
MAX_LENGTH = {"method": 100, "authors": 300, "link": 500, "reason": 500}
#: Unicode general categories refused in text (and escaped by :func:`visible`).
REFUSED_CATEGORIES = {
    "Cc": "control character", "Cf": "format character (bidi control, zero-width, ...)",
    "Cs": "surrogate", "Co": "private-use character", "Cn": "unassigned code point",
    "Zl": "line separator", "Zp": "paragraph separator",
}
#: Characters a percent-encoded URL may hold (RFC 3986 unreserved + reserved, and '%').
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")


def refused_category(ch: str) -> str | None:
    """What kind of refused character ``ch`` is (``"control character"``, ...), or None when allowed."""
    return REFUSED_CATEGORIES.get(unicodedata.category(ch))


def _describe(ch: str) -> str:
    code = f"U+{ord(ch):04X}"
    name = unicodedata.name(ch, "")
    return f"{code} {name}" if name else code


def check_text(value: str | None, field: str, required: bool = False, max_length: int | None = None) -> str:
    """``value`` stripped, when it follows the character policy; else a :class:`TextPolicyError`.

    ``field`` names it in messages and picks its length limit from :data:`MAX_LENGTH`.
    ``None`` and blank text are ``""`` unless ``required``.
    """
    if value is not None and not isinstance(value, str):
        raise TextPolicyError(f"the {field} must be text, not {type(value).__name__}")
    text = (value or "").strip()
    if required and not text:
        raise TextPolicyError(f"the {field} is empty; give one line of text")
    limit = max_length or MAX_LENGTH.get(field, 300)
    if len(text) > limit:
        raise TextPolicyError(f"the {field} is {len(text):,} characters long; keep it to {limit} or fewer")
    for position, ch in enumerate(text):
        kind = refused_category(ch)
        if kind:
            raise TextPolicyError(
                f"the {field} contains a {kind}, {_describe(ch)}, at position {position}; names, authors "
                f"and reasons are one line of visible text (no control, escape, bidi or other format "
                f"characters): remove it")
    return text


def encoded_link(value: str) -> str:
    """``value`` as a URL may hold it (a suggestion for messages): the host in its IDNA (``xn--``) form,
    every other character a URL may not hold as such percent-encoded."""
    safe = "-._~:/?#[]@!$&'()*+,;=%"
    try:
        parts = urlsplit(value)
        host = parts.netloc.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return quote(value, safe=safe)
    scheme = value[:len(parts.scheme)]
    rest = value[len(scheme) + 3 + len(parts.netloc):] if "://" in value else ""
    return f"{scheme}://{host}{quote(rest, safe=safe)}" if rest or host else quote(value, safe=safe)


def check_link(value: str | None, field: str = "link") -> str:
    """``value`` stripped, when it is an absolute, percent-encoded http(s) URL without credentials; else a
    :class:`TextPolicyError`.  ``None`` and blank are ``""`` (a link is optional)."""
    if value is not None and not isinstance(value, str):
        raise TextPolicyError(f"the {field} must be text, not {type(value).__name__}")
    link = (value or "").strip()
    if not link:
        return ""
    limit = MAX_LENGTH.get(field, MAX_LENGTH["link"])
    if len(link) > limit:
        raise TextPolicyError(f"the {field} is {len(link):,} characters long; keep it to {limit} or fewer")
    shown = repr(link if len(link) <= 60 else link[:57] + "...")
    if not link.lower().startswith(("http://", "https://")):
        raise TextPolicyError(f"the {field} {shown} is not a web address; give an absolute http(s):// URL to "
                              f"the paper or code, or leave it empty")
    if not _URL_CHARS.fullmatch(link) or _BAD_PERCENT.search(link):
        bad = next((ch for ch in link if not _URL_CHARS.fullmatch(ch)), "%")
        what = (f"holds {_describe(bad)}" if bad != "%" else "holds a '%' not followed by two hex digits")
        suggestion = encoded_link(link) if bad != "%" else link.replace("%", "%25")
        shown_fix = suggestion if len(suggestion) <= 120 else suggestion[:117] + "..."
        raise TextPolicyError(f"the {field} {shown} {what}; a link is a percent-encoded URL "
                              f"(spaces, quotes, <, > and non-ASCII characters encoded), e.g. {shown_fix}")
    try:
        parts = urlsplit(link)
        port = parts.port
    except ValueError as exc:
        raise TextPolicyError(f"the {field} {shown} is not a valid URL ({exc}); give an absolute http(s):// "
                              f"URL") from None
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise TextPolicyError(f"the {field} {shown} holds a user name or password; give the address without "
                              f"credentials (nothing before an '@' in the host part)")
    host = parts.netloc.rsplit(":", 1)[0] if port is not None or parts.netloc.endswith(":") else parts.netloc
    if not host or not (_HOST.fullmatch(host) or _IPV6.fullmatch(host)):
        raise TextPolicyError(f"the {field} {shown} has no valid host name; give an absolute URL such as "
                              f"https://arxiv.org/abs/2406.19395 (international names in their xn-- form)")
    return link


def safe_link(value: str | None) -> str:
    """The link when it passes :func:`check_link` today, else ``""`` (an old row is then shown unlinked)."""
    try:
        return check_link(value)
    except TextPolicyError:
        return ""


def visible(text: str) -> str:
    """``text`` with each character the policy refuses shown as a visible escape.

    ``"a\\x1b[31mb"`` becomes ``a\\x1b[31mb`` with a literal backslash, ``"\\u202e"`` becomes
    ``\\u202e``: what a terminal or a reader sees is what is stored, and nothing is interpreted.
    """
    if all(refused_category(ch) is None for ch in text):
        return text
    out = []
    for ch in text:
        if refused_category(ch) is None:
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with a final ``…`` when longer (for aligned tables)."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def one_line(text: str, width: int | None = None) -> str:
    """:func:`visible` text, cut to ``width``: how a terminal table shows any stored text."""
    shown = visible(text)
    return shorten(shown, width) if width else shown

