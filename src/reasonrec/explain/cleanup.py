"""Turn a raw continuation into one clean sentence, and say what had to be repaired.

Small models echo the forced prefix, run on past the first sentence, loop on a phrase, or stop
mid-word at the token limit. None of that may crash a run: every output becomes either a usable
sentence (with the repairs recorded) or is marked failed with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reasonrec.llm.base import ENUMERATOR, list_number

# A sentence ends at . ! ? followed by whitespace/end, unless the dot belongs to a common abbreviation.
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "u.s", "no", "vol", "ft"}
_SENT_END = re.compile(r"[.!?](?=\s|$)")
_LABEL = re.compile(r"^\s*(explanation|answer|reason|output|profile)\s*:\s*", re.I)
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z0-9']+")
_TRAILING_NUMBER = re.compile(r"(?<![\w.])(\d{1,2})\.$")
_LATER_ITEM = re.compile(r"(?<![\w.])2\.(?=\s|$)")


@dataclass
class Cleaned:
    text: str
    ok: bool
    repairs: list[str] = field(default_factory=list)
    reason: str | None = None  # why it failed, when not ok


def first_sentence(text: str) -> tuple[str, bool]:
    """Text up to and including the first sentence end; (text, was_cut). The dots of abbreviations,
    initials and list numbers ("genres: 1. Comedy 2. Drama") end no sentence."""
    number = None
    for m in _SENT_END.finditer(text):
        before = text[:m.start()]
        last = before.rsplit(None, 1)[-1].lower() if before.split() else ""
        if m.group() == "." and (last.rstrip(".") in _ABBREV or (len(last) == 1 and last.isalpha())):
            continue
        if m.group() == "." and (k := list_number(text, m.start(), number)) is not None:
            number = k
            continue
        end = m.end()
        return text[:end], bool(text[end:].strip())
    return text, False


def cut_repetition(text: str, n: int = 3, max_repeats: int = 2) -> tuple[str, bool]:
    """Cut where a word n-gram appears more than `max_repeats` times (a generation loop)."""
    words = text.split()
    seen: dict[tuple, list[int]] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(w.lower().strip(",.;:") for w in words[i:i + n])
        seen.setdefault(gram, []).append(i)
        if len(seen[gram]) > max_repeats:  # keep the text up to where the loop began repeating
            return " ".join(words[:seen[gram][1]]).rstrip(",;: "), True
    # the same word 4 times in a row is a loop too ("very very very very")
    for i in range(len(words) - 3):
        if len({w.lower() for w in words[i:i + 4]}) == 1:
            return " ".join(words[:i]).rstrip(",;: "), True
    return text, False


def clean(prefix: str, continuation: str, finish_reason: str = "stop", min_words: int = 3) -> Cleaned:
    """`prefix` is the forced answer start (kept in the final text); `continuation` what the model added."""
    repairs: list[str] = []
    text = continuation.replace("\r", " ")
    text = _WS.sub(" ", text).strip()
    stripped = _LABEL.sub("", text)
    if stripped != text:
        repairs.append("stripped_label")
        text = stripped
    text = text.strip().strip('"').strip("\u201c\u201d").strip()
    if (m := ENUMERATOR.match(text)) and not _LATER_ITEM.search(first_sentence(text)[0], m.end()):
        text = text[m.end():].lstrip()   # "1. The consumer ..." numbers a one-item answer: drop it
        repairs.append("stripped_enumerator")
    if prefix:
        # the model sometimes starts over with the very words it was given
        p = prefix.strip().lower()
        while text.lower().startswith(p):
            text = text[len(p):].lstrip(" ,:")
            if "stripped_echo" not in repairs:
                repairs.append("stripped_echo")
    text, cut = first_sentence(text)
    if cut:
        repairs.append("kept_first_sentence")
    text, looped = cut_repetition(text)
    if looped:
        repairs.append("cut_repetition")
    text = text.strip()
    if m := _TRAILING_NUMBER.search(text):
        # "...genres: 1." is a list cut off before its first item; "1. a 2. b 3." only lost its tail
        before = text[: m.start()].rstrip()
        if not before or before.endswith(":"):
            return Cleaned(f"{prefix.strip()} {before}".strip(), False, repairs, "truncated_list")
        if int(m.group(1)) > 1 and f"{int(m.group(1)) - 1}." in before:
            text = before
            repairs.append("cut_list_number")
    if finish_reason == "length" and not _SENT_END.search(text[-1:] if text else ""):
        repairs.append("hit_token_limit")
    body_words = _WORD.findall(text)
    full = f"{prefix.strip()} {text}".strip() if prefix else text
    if text and full[-1] not in ".!?":
        full = full.rstrip(",;: ") + "."
        repairs.append("added_period")
    if not body_words:
        return Cleaned(full, False, repairs, "empty")
    if len(body_words) < min_words and prefix:
        return Cleaned(full, False, repairs, "too_short")
    if len(set(w.lower() for w in body_words)) <= 1 and len(body_words) > 2:
        return Cleaned(full, False, repairs, "degenerate")
    return Cleaned(full, True, repairs)
