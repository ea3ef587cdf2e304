"""The sanitizer: exact undo of homoglyph, invisible-character and leet perturbations of real SMS
messages (property-based), idempotence, numbers kept, and the share of clean messages it leaves
unchanged."""

from __future__ import annotations

import random
import re
import string
import time
import unicodedata

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustops.data.sms_spam import TextDataset
from robustops.text.models import TorchTextClassifier
from robustops.text.sanitize import (
    CONFUSABLES,
    HOMOGLYPHS,
    INVISIBLE,
    LEET,
    SanitizedClassifier,
    sanitize,
    sanitize_many,
)

FLAGS = ("nfkc", "confusables", "invisible", "deleet", "whitespace")
_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# --- the attacker's side (what the guarantees in the module docstring cover) -------------------

_MATH_LETTERS = (0x1D400, 0x1D4D0, 0x1D5A0, 0x1D5D4, 0x1D670)  # bold, bold script, sans, …
_MATH_DIGITS = (0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6)


def _styled(ch: str) -> list[str]:
    """Fullwidth and mathematical-alphanumeric forms of an ASCII letter or digit."""
    if not (ch.isascii() and ch.isalnum()):
        return []
    if ch.isdigit():
        forms = [chr(base + int(ch)) for base in _MATH_DIGITS]
    else:
        offset = ord(ch) - 65 if ch.isupper() else ord(ch) - 97 + 26
        forms = [chr(base + offset) for base in _MATH_LETTERS]
    forms.append(chr(ord(ch) + 0xFEE0))
    assert all(unicodedata.normalize("NFKC", f) == ch for f in forms)
    return forms


def homoglyph_attack(text: str, rng: random.Random, p: float) -> str:
    out = []
    for ch in text:
        subs = [*HOMOGLYPHS.get(ch, ()), *_styled(ch)]
        out.append(rng.choice(subs) if subs and rng.random() < p else ch)
    return "".join(out)


_INVISIBLE = sorted(INVISIBLE)


def invisible_attack(text: str, rng: random.Random, p: float) -> str:
    out = []
    for ch in [*text, ""]:
        while rng.random() < p:
            out.append(rng.choice(_INVISIBLE))
        out.append(ch)
    return "".join(out)


_GLYPHS: dict[str, list[str]] = {}
for _glyph, _letter in LEET.items():
    _GLYPHS.setdefault(_letter, []).append(_glyph)
_PURE_WORD = re.compile(r"(?<![A-Za-z0-9@$|])[A-Za-z]{3,}(?![A-Za-z0-9@$|])")


def leet_attack(text: str, rng: random.Random, p: float) -> str:
    """Leet on interior letters of purely alphabetic words; no two adjacent substitutions unless
    of one doubled letter (then with the same glyph); lower-case letters in lower-case or
    capitalised words, upper-case letters in all-capitals words."""
    chars = list(text)
    for m in _PURE_WORD.finditer(text):
        word = m.group()
        if word.isupper():
            eligible = str.isupper
        elif word[1:].islower():
            eligible = str.islower
        else:
            continue
        prev = -2
        for i in range(1, len(word) - 1):
            ch = word[i]
            if not (eligible(ch) and ch.lower() in _GLYPHS) or rng.random() >= p:
                continue
            pos = m.start() + i
            if prev == i - 1:
                if word[i - 1] != ch or (i >= 2 and chars[pos - 2] != word[i - 2]):
                    continue
                chars[pos] = chars[pos - 1]
            else:
                chars[pos] = rng.choice(_GLYPHS[ch.lower()])
            prev = i
    return "".join(chars)


def _all_messages(sms: TextDataset) -> list[str]:
    return [*sms.texts_train, *sms.texts_test]


@pytest.fixture(scope="module")
def messages(sms: TextDataset) -> list[str]:
    return _all_messages(sms)


def _message_and_rng(sms_texts: list[str]) -> st.SearchStrategy[tuple[str, random.Random]]:
    return st.tuples(st.sampled_from(sms_texts), st.randoms(use_true_random=False))


# --- tables ------------------------------------------------------------------------------------


def test_confusables_table_is_sound() -> None:
    assert len(CONFUSABLES) > 250
    for ch, target in CONFUSABLES.items():
        assert not ch.isascii() and target in string.ascii_letters + string.digits
        assert sanitize(ch) == sanitize(ch, nfkc=False) == target
        assert ch not in INVISIBLE
    # NFKC would turn these three into other Greek letters: they are folded before it
    unstable = {ch for ch in CONFUSABLES if unicodedata.normalize("NFKC", ch) != ch}
    assert unstable == {"\u03f2", "\u03f9", "\u03d2"}
    assert {ch for subs in HOMOGLYPHS.values() for ch in subs} == set(CONFUSABLES)
    assert all(CONFUSABLES[ch] == t for t, subs in HOMOGLYPHS.items() for ch in subs)
    # Cyrillic and Greek look-alikes of a-z/A-Z (with NFKC, fullwidth and math forms of all)
    for word in ("аеорсху", "АВЕКМНОРСТХ", "οικνρυ", "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"):
        assert sanitize(word).isascii(), word
    assert sanitize("ѕсаm ԝеb") == "scam web"
    assert all(sanitize(f) == c for c in string.ascii_letters + string.digits for f in _styled(c))
    assert sorted(LEET.values()) == sorted("oieastasl")


def test_invisible_characters_are_removed() -> None:
    for ch in ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u2066",
               "\ufe0f", "\U000e0041", "\U000e0100", "\u034f", "\u3164", "\u180e", "\x00"):  # fmt: skip
        assert ch in INVISIBLE, hex(ord(ch))
        assert sanitize(f"fr{ch}ee") == "free"
    assert sanitize("a\tb\nc  d") == "a\tb\nc  d"  # whitespace is not invisible


def test_examples_of_each_step() -> None:
    assert sanitize("ＦＲＥＥ ｃａｓｈ 𝐰𝐢𝐧 𝕡𝕣𝕚𝕫𝕖 𝚌𝚊𝚕𝚕 ①") == "FREE cash win prize call 1"
    assert sanitize("Ϲall nоw tо сlаіm yоur ΡRΙΖΕ") == "Call now to claim your PRIZE"
    assert sanitize("f̶r̶e̶e̶ w̲i̲n̲") == "free win"
    leet = "g00d fr33dom w1nn3r cl4im c@sh t3xt $T0P"
    assert sanitize(leet) == "good freedom winner claim cash text $TOP"
    assert sanitize("cl41m fr33 3asy 70") == "cl41m fr33 3asy 70"  # not inside a word: kept
    assert sanitize("FR3E ENTRY Fr3e Entry") == "FREE ENTRY Free Entry"
    assert sanitize("f r e e entry, F.R.E.E, w-i-n, c . a . s . h") == "free entry, FREE, win, cash"
    assert sanitize("U r a star, i m n") == "U r a star, i m n"  # < 4 single letters: kept
    assert sanitize("Good\u2028night\u00a0all") == "Good night all"


@pytest.mark.parametrize(
    "text",
    [
        "Call 09061701461 now! £1.50/wk, 150p/msg, msg@150p, $100 or £1000 cash",
        "Txt STOP to 87121 (std txt rate) 08452810075over18's T&C's",
        "PO Box 5249, MK17 92H. 450Ppw 16+ 10am 9pm 1st 2nd 3rd 21st",
        "gr8 b4 some1 2day 4u l8r 2nite No1 MP3 W1 3G 40GB 7250i",
        "Your code is KL341. Valid 12 hours, 0800 1 2 3, 07xxxxxxxxx",
    ],
)
def test_numbers_prices_and_codes_are_kept(text: str) -> None:
    assert sanitize(text) == text


def test_each_flag_switches_its_step_off() -> None:
    text = "Ｆrее\u200b g00d f r e e"
    assert sanitize(text) == "Free good free"
    assert sanitize(text, invisible=False) == "Free\u200b good free"
    assert sanitize(text, nfkc=False) == "Ｆree good free"
    assert sanitize(text, confusables=False) == "Frее good free"
    assert sanitize(text, deleet=False) == "Free g00d free"
    assert sanitize(text, whitespace=False) == "Free good f r e e"
    assert sanitize(text, **dict.fromkeys(FLAGS, False)) == text


# --- exact undo (property-based, over real SMS messages) ---------------------------------------


def test_exact_undo_on_every_message(messages: list[str]) -> None:
    """Each attack once, at a high rate, on every message of the collection."""
    rng = random.Random(0)
    for text in messages:
        clean = sanitize(text)
        assert sanitize(homoglyph_attack(text, rng, 0.5)) == clean, text
        assert sanitize(invisible_attack(text, rng, 0.2)) == clean, text
        assert sanitize(leet_attack(text, rng, 0.6)) == clean, text


@pytest.fixture(scope="module")
def sms_texts(sms: TextDataset) -> list[str]:
    return _all_messages(sms)


def _check(attack: str, text: str, rng: random.Random, p: float) -> None:
    attacks = {"homoglyph": homoglyph_attack, "invisible": invisible_attack, "leet": leet_attack}
    if attack == "all":
        attacked = invisible_attack(
            homoglyph_attack(leet_attack(text, rng, p), rng, p / 2), rng, p / 4
        )
    else:
        attacked = attacks[attack](text, rng, p)
    assert sanitize(attacked) == sanitize(text), (text, attacked)


@pytest.mark.parametrize("attack", ["homoglyph", "invisible", "leet", "all"])
def test_exact_undo_property(attack: str, sms_texts: list[str]) -> None:
    @_SETTINGS
    @given(_message_and_rng(sms_texts), st.floats(0.05, 1.0))
    def check(case: tuple[str, random.Random], p: float) -> None:
        text, rng = case
        _check(attack, text, rng, p)

    check()


def test_attacks_do_change_the_messages(messages: list[str]) -> None:
    rng = random.Random(1)
    sample = messages[:300]
    assert sum(leet_attack(t, rng, 0.5) != t for t in sample) > 250
    assert sum(homoglyph_attack(t, rng, 0.3) != t for t in sample) > 290


# --- idempotence and clean text ----------------------------------------------------------------


def test_idempotent_on_every_message(messages: list[str]) -> None:
    once = sanitize_many(messages)
    assert sanitize_many(once) == once


_ALPHABET = st.sampled_from(
    [
        *"abeIlO0134579@$| .-_*~+/!\n\t",
        *list(CONFUSABLES)[::5],
        *_INVISIBLE[::9],
        *["\u0301", "\u0332", "é", "ü", "…", "ﬁ", "\u00a0", "\u2028", "Ｆ", "𝐟", "가", "\u3164"],
    ]
)


@_SETTINGS
@given(
    st.one_of(st.text(_ALPHABET, max_size=40), st.text(max_size=40)),
    st.fixed_dictionaries({flag: st.booleans() for flag in FLAGS}),
)
def test_idempotent_on_any_text(text: str, flags: dict[str, bool]) -> None:
    once = sanitize(text, **flags)
    assert sanitize(once, **flags) == once


def test_clean_messages_are_mostly_unchanged(messages: list[str]) -> None:
    start = time.perf_counter()
    cleaned = sanitize_many(messages)
    elapsed = time.perf_counter() - start
    changed = [(a, b) for a, b in zip(messages, cleaned, strict=True) if a != b]
    share = 1 - len(changed) / len(messages)
    print(f"\nclean SMS messages unchanged by sanitize: {share:.2%} of {len(messages)}")
    assert share >= 0.985
    assert elapsed < 2.0, elapsed
    only_nfkc = sum(a != unicodedata.normalize("NFKC", a) for a in messages)
    assert only_nfkc == 12


# --- the wrapper -------------------------------------------------------------------------------


def test_sanitized_classifier_sees_through_the_attacks(
    spam_model: TorchTextClassifier, sms: TextDataset
) -> None:
    rng = random.Random(2)
    spam = [t for t, y in zip(sms.texts_test, sms.y_test.tolist(), strict=True) if y == 1][:60]
    attacked = [
        invisible_attack(homoglyph_attack(leet_attack(t, rng, 0.5), rng, 0.3), rng, 0.1)
        for t in spam
    ]
    guarded = SanitizedClassifier(spam_model)
    assert guarded.num_classes == 2
    assert torch.equal(guarded.predict_logits(attacked), guarded.predict_logits(spam))
    assert guarded.sanitize(attacked) == sanitize_many(spam)
    # without the sanitizer the same perturbations move the undefended model's outputs
    assert not torch.equal(spam_model.predict_logits(attacked), spam_model.predict_logits(spam))
    assert "deleet" in repr(SanitizedClassifier(spam_model, deleet=False))
