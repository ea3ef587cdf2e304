"""Character tables of the text attacks: homoglyphs, QWERTY neighbours, leetspeak, invisibles.

Every table is chosen so that a sanitizer can undo it *exactly*:

- :data:`HOMOGLYPHS` maps an ASCII letter to look-alikes from other scripts (Cyrillic, Greek,
  Armenian, Latin IPA). Each look-alike stands for exactly one ASCII letter, and every pair is
  listed in Unicode's confusables data (UTS #39); :data:`CONFUSABLE_TO_ASCII` is the inverse.
  None of them is changed by NFKC, so normalisation alone does not undo them.
- :data:`LEET` maps a letter to one digit, a different digit for each letter, so that
  :data:`LEET_TO_LETTER` is a function (``1`` is ``i`` only, never ``l``). Upper-case letters
  use the digit of their lower-case letter; the inverse yields lower case. ``2``, ``6``, ``8``
  and ``9`` (``z``, ``b``, ``g``) are left out: words holding them read as numbers or SMS slang
  (``gr8``, ``b4``), which :func:`robustops.text.sanitize.sanitize` keeps as they are.
- :data:`INVISIBLE_CHARS` are format characters (Unicode category ``Cf``, default-ignorable)
  that render as nothing inside a word: removing every ``Cf`` character undoes them.
- :data:`KEYBOARD_NEIGHBOURS` is the QWERTY adjacency used by typo-style substitutions; it is
  not meant to be undone (a typo is a typo).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = [
    "CONFUSABLE_TO_ASCII",
    "HOMOGLYPHS",
    "INVISIBLE_CHARS",
    "KEYBOARD_NEIGHBOURS",
    "LEET",
    "LEET_TO_LETTER",
]

_HOMOGLYPHS: dict[str, tuple[str, ...]] = {
    # lower case
    "a": ("\u0430",),  # CYRILLIC SMALL LETTER A
    "c": ("\u0441",),  # CYRILLIC SMALL LETTER ES
    "d": ("\u0501",),  # CYRILLIC SMALL LETTER KOMI DE
    "e": ("\u0435",),  # CYRILLIC SMALL LETTER IE
    "g": ("\u0261",),  # LATIN SMALL LETTER SCRIPT G
    "h": ("\u04bb",),  # CYRILLIC SMALL LETTER SHHA
    "i": ("\u0456",),  # CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I
    "j": ("\u0458",),  # CYRILLIC SMALL LETTER JE
    "l": ("\u04cf",),  # CYRILLIC SMALL LETTER PALOCHKA
    "n": ("\u0578",),  # ARMENIAN SMALL LETTER VO
    "o": ("\u043e", "\u03bf"),  # CYRILLIC SMALL LETTER O, GREEK SMALL LETTER OMICRON
    "p": ("\u0440", "\u03c1"),  # CYRILLIC SMALL LETTER ER, GREEK SMALL LETTER RHO
    "q": ("\u051b",),  # CYRILLIC SMALL LETTER QA
    "s": ("\u0455",),  # CYRILLIC SMALL LETTER DZE
    "u": ("\u057d",),  # ARMENIAN SMALL LETTER SEH
    "v": ("\u03bd",),  # GREEK SMALL LETTER NU
    "w": ("\u051d",),  # CYRILLIC SMALL LETTER WE
    "x": ("\u0445",),  # CYRILLIC SMALL LETTER HA
    "y": ("\u0443",),  # CYRILLIC SMALL LETTER U
    # upper case
    "A": ("\u0410", "\u0391"),  # CYRILLIC A, GREEK ALPHA
    "B": ("\u0412", "\u0392"),  # CYRILLIC VE, GREEK BETA
    "C": ("\u0421",),  # CYRILLIC ES
    "E": ("\u0415", "\u0395"),  # CYRILLIC IE, GREEK EPSILON
    "H": ("\u041d", "\u0397"),  # CYRILLIC EN, GREEK ETA
    "I": ("\u0406", "\u0399"),  # CYRILLIC BYELORUSSIAN-UKRAINIAN I, GREEK IOTA
    "J": ("\u0408",),  # CYRILLIC JE
    "K": ("\u041a", "\u039a"),  # CYRILLIC KA, GREEK KAPPA
    "M": ("\u041c", "\u039c"),  # CYRILLIC EM, GREEK MU
    "O": ("\u041e", "\u039f"),  # CYRILLIC O, GREEK OMICRON
    "P": ("\u0420", "\u03a1"),  # CYRILLIC ER, GREEK RHO
    "S": ("\u0405",),  # CYRILLIC DZE
    "T": ("\u0422", "\u03a4"),  # CYRILLIC TE, GREEK TAU
    "X": ("\u0425", "\u03a7"),  # CYRILLIC HA, GREEK CHI
    "Y": ("\u04ae", "\u03a5"),  # CYRILLIC STRAIGHT U, GREEK UPSILON
    "Z": ("\u0396",),  # GREEK ZETA
}

HOMOGLYPHS: Final = MappingProxyType(_HOMOGLYPHS)
"""ASCII letter → look-alike characters from other scripts (each look-alike used once)."""


def _inverse_homoglyphs() -> dict[str, str]:
    inverse = {glyph: letter for letter, glyphs in _HOMOGLYPHS.items() for glyph in glyphs}
    # A sanitizer may lower-case before mapping: the lower-case forms of the capital look-alikes
    # (Greek alpha, Cyrillic ve, ...) then stand for the lower-case letter. None is itself a
    # look-alike of another letter (Greek capital nu is left out because its small form, nu, looks
    # like "v").
    for glyph, letter in list(inverse.items()):
        small = glyph.lower()
        if (
            letter.isupper()
            and small != glyph
            and inverse.setdefault(small, letter.lower()) != letter.lower()
        ):
            raise ValueError(f"homoglyph table: {small!r} would stand for two letters")
    return inverse


CONFUSABLE_TO_ASCII: Final = MappingProxyType(_inverse_homoglyphs())
"""Inverse of :data:`HOMOGLYPHS`: look-alike → the ASCII letter it imitates; also maps the
lower-case form of each capital look-alike to the lower-case letter."""

_LEET: dict[str, str] = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
LEET: Final = MappingProxyType(
    {**_LEET, **{letter.upper(): digit for letter, digit in _LEET.items()}}
)
"""Letter (either case) → its leetspeak digit; one digit per letter."""

LEET_TO_LETTER: Final = MappingProxyType({digit: letter for letter, digit in _LEET.items()})
"""Inverse of :data:`LEET` (lower case): digit → letter."""

INVISIBLE_CHARS: Final[tuple[str, ...]] = (
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c",  # ZERO WIDTH NON-JOINER
    "\u200d",  # ZERO WIDTH JOINER
    "\u2060",  # WORD JOINER
    "\u2061",  # FUNCTION APPLICATION
    "\u2062",  # INVISIBLE TIMES
    "\u2063",  # INVISIBLE SEPARATOR
    "\u2064",  # INVISIBLE PLUS
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    "\u00ad",  # SOFT HYPHEN (invisible unless the line breaks there)
)
"""Characters that render as nothing inside a word; all of Unicode category ``Cf``."""

_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _qwerty_neighbours() -> dict[str, str]:
    """Keys touching each letter on a staggered QWERTY layout: same row ±1, the row above at
    columns ``c`` and ``c + 1`` and the row below at ``c - 1`` and ``c``."""
    out: dict[str, str] = {}
    for r, row in enumerate(_QWERTY_ROWS):
        for c, key in enumerate(row):
            near: list[str] = []
            for rr, cols in ((r - 1, (c, c + 1)), (r, (c - 1, c + 1)), (r + 1, (c - 1, c))):
                if 0 <= rr < len(_QWERTY_ROWS):
                    near += [_QWERTY_ROWS[rr][cc] for cc in cols if 0 <= cc < len(_QWERTY_ROWS[rr])]
            out[key] = "".join(sorted(near))
    return out


KEYBOARD_NEIGHBOURS: Final = MappingProxyType(_qwerty_neighbours())
"""Lower-case letter → the letters of its neighbouring QWERTY keys (sorted)."""
