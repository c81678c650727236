"""The character policy (lora_wise.text) and valid JSON (lora_wise.jsonio), on their own."""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np
import pytest

from lora_wise import jsonio
from lora_wise.errors import LoRAWiSEError, TextPolicyError
from lora_wise.text import MAX_LENGTH, check_link, check_text, encoded_link, safe_link, visible

#: Characters the policy refuses, one of each kind the issue names and more.
REFUSED = {
    "ESC (terminal escape)": "\x1b", "NUL": "\x00", "newline": "\n", "carriage return": "\r", "tab": "\t",
    "DEL": "\x7f", "C1 CSI": "\x9b", "RIGHT-TO-LEFT OVERRIDE": "\u202e", "LEFT-TO-RIGHT EMBEDDING": "\u202a",
    "RIGHT-TO-LEFT ISOLATE": "\u2067", "POP DIRECTIONAL ISOLATE": "\u2069", "RIGHT-TO-LEFT MARK": "\u200f",
    "ARABIC LETTER MARK": "\u061c", "ZERO WIDTH SPACE": "\u200b", "ZERO WIDTH JOINER": "\u200d",
    "BYTE ORDER MARK": "\ufeff", "SOFT HYPHEN": "\xad", "TAG LATIN SMALL LETTER A": "\U000e0061",
    "LINE SEPARATOR": "\u2028", "PARAGRAPH SEPARATOR": "\u2029", "private use": "\ue000",
    "lone surrogate": "\ud800", "unassigned": "\U000e0fff",
}


@pytest.mark.parametrize("label", sorted(REFUSED))
def test_every_refused_character_is_named_in_one_line(label):
    ch = REFUSED[label]
    with pytest.raises(TextPolicyError) as info:
        check_text(f"good {ch}name", "method")
    message = str(info.value)
    assert "\n" not in message and f"U+{ord(ch):04X}" in message and "position 5" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, LoRAWiSEError)
    assert unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    shown = visible(f"a{ch}b")  # what a terminal gets for an old row holding it: only printable ASCII escapes
    assert shown.startswith("a\\") and shown.endswith("b") and shown.isprintable() and ch not in shown


@pytest.mark.parametrize("text", [
    "math $\\foo$ x", "<b>bold</b> & <script>alert(1)</script>", "[x](https://e.org) **y** _z_ `c`",
    "Ω-net (ß) 中文 العربية עברית", "emoji 🦄 ok", "a\u00a0b",  # letters of every script, symbols, no-break space
])
def test_visible_text_is_kept_exactly_as_typed(text):
    assert check_text(f"  {text} ", "method") == text  # stripped only
    assert visible(text) == text


def test_lengths_and_types():
    assert check_text(None, "authors") == "" and check_text("   ", "authors") == ""
    assert check_text("x" * MAX_LENGTH["method"], "method") == "x" * MAX_LENGTH["method"]
    with pytest.raises(TextPolicyError, match=r"the method is 101 characters long; keep it to 100 or fewer"):
        check_text("x" * 101, "method")
    with pytest.raises(TextPolicyError, match="the reason is empty"):
        check_text(" ", "reason", required=True)
    with pytest.raises(TextPolicyError, match="must be text, not int"):
        check_text(3, "method")


@pytest.mark.parametrize("link, message", [
    ('https://x.org/) <img src="http://127.0.0.1:9/t.png">', r"holds U\+0020 SPACE.*e\.g\. https://x\.org/\)%20%3Cimg"),
    ("https://x.org/\"onmouseover=alert(1)", r"U\+0022 QUOTATION MARK"),
    ("javascript:alert(1)", "is not a web address"),
    ("data:text/html,<b>x</b>", "is not a web address"),
    ("//x.org/a", "is not a web address"),
    ("ftp://x.org/a", "is not a web address"),
    ("x.org", "is not a web address"),
    ("https://user:secret@x.org/", "holds a user name or password"),
    ("https://user@x.org/", "holds a user name or password"),
    ("https:///path", "has no valid host name"),
    ("https://-x.org/", "has no valid host name"),
    ("https://x.org:99999/", "is not a valid URL"),
    ("https://x.org/%zz", "holds a '%' not followed by two hex digits"),
    ("https://é.org/", r"U\+00E9.*e\.g\. https://xn--9ca\.org/"),
    ("https://x.org/\u202egnp.exe", r"U\+202E"),
    ("https://x.org/a\nb", r"U\+000A"),
    ("https://x.org/" + "a" * 500, "keep it to 500 or fewer"),
])
def test_links_outside_the_policy_are_refused(link, message):
    with pytest.raises(TextPolicyError, match=message) as info:
        check_link(link)
    assert "\n" not in str(info.value)
    assert safe_link(link) == ""


@pytest.mark.parametrize("link", [
    "https://arxiv.org/abs/2406.19395", "http://example.org", "https://x.org/a%20b?q=1&r=(2)#frag",
    "https://en.wikipedia.org/wiki/Foo_(bar)", "https://xn--9ca.org/", "http://127.0.0.1:8080/x",
    "http://[::1]:8080/a", "HTTPS://X.ORG/",
])
def test_absolute_percent_encoded_links_pass(link):
    assert check_link(f" {link} ") == link == safe_link(link)
    assert encoded_link(link) == link  # nothing left to encode


def test_empty_link_is_no_link():
    assert check_link(None) == check_link("") == check_link("  ") == ""


def test_json_is_always_valid_json():
    assert jsonio.dumps({"a": np.float64(1.5), "b": np.arange(3), "c": np.int64(2)}, sort_keys=True) == \
        '{"a": 1.5, "b": [0, 1, 2], "c": 2}'
    for bad in (math.inf, -math.inf, math.nan, np.float64("inf")):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            jsonio.dumps({"mae": bad})
    for text in ('{"x": NaN}', '{"x": Infinity}', "[-Infinity]"):
        json.loads(text)  # Python's own reader takes them ...
        with pytest.raises(ValueError, match="is not a JSON number"):
            jsonio.loads(text)  # ... ours does not
    assert jsonio.loads('{"x": 1e308}') == {"x": 1e308}
