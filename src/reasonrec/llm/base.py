"""The one interface every LLM backend implements.

`generate(prompts, params) -> list[Generation]`, batched. A prompt is a chat (role, content) list
plus an optional forced start of the answer (the papers' "The consumer watched this movie
because ..."): each backend renders it the way its model expects, so templates never contain
model-specific chat markup.

Backends declare what they support so callers (the explanation engine, the ExpCTR judge) can pick
the fast path without isinstance checks. A backend that talks to a server may also have `check()`,
which raises `BackendUnavailable` when the server cannot serve; the Explainer calls it before it
sends the first prompt of a run, so a dead server is reported before any work is queued.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from reasonrec.errors import BackendUnavailable, ReasonrecError


@dataclass(frozen=True)
class Prompt:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), roles: system | user | assistant
    prefix: str = ""  # forced beginning of the assistant's answer; not repeated in Generation.text

    @classmethod
    def user(cls, content: str, prefix: str = "", system: str | None = None) -> "Prompt":
        msgs = ((("system", system),) if system else ()) + (("user", content),)
        return cls(messages=msgs, prefix=prefix)

    def canonical(self) -> str:
        """Backend-independent rendering used in cache keys."""
        return json.dumps({"messages": [list(m) for m in self.messages], "prefix": self.prefix},
                          ensure_ascii=False, sort_keys=True)

    def key(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


@dataclass(frozen=True)
class GenerationParams:
    """Decoding parameters. Part of every cache key, so two settings never share an entry."""

    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy: reproducible, and the papers' zero-shot setting
    top_p: float = 1.0
    stop_at_sentence_end: bool = True  # the papers ask for exactly one sentence
    seed: int = 0

    def key(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    text: str                      # continuation only (without Prompt.prefix)
    tokens: int = 0                # new tokens produced
    prompt_tokens: int = 0
    finish_reason: str = "stop"    # stop | length | error
    error: str | None = None


@dataclass(frozen=True)
class Capabilities:
    batching: bool = True
    prefix_sharing: bool = False   # generate_groups() prefills a group's common prefix once
    logprobs: bool = False         # score() works (the ExpCTR Yes/No judge needs it)


@runtime_checkable
class LLMBackend(Protocol):
    model_id: str                  # stable identity of the weights (+ adapter); part of cache keys
    capabilities: Capabilities

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[Generation]:
        ...

    def generate_groups(self, groups: list[list[Prompt]], params: GenerationParams) -> list[list[Generation]]:
        """Prompts in one group share a long prefix (the positive and negative prompt of one
        sample); backends that can, compute it once. Default: flatten."""
        ...

    def score(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        """Sum of log-probabilities of each continuation after its prompt (needs capabilities.logprobs)."""
        ...


SENTENCE_END = re.compile(r"[.!?](?=\s)")
# Small models often answer with a list ("1. The consumer ...", "genres: 1. Comedy 2. Drama"); the
# dot of a list number ends no sentence.
ENUMERATOR = re.compile(r"\s*\d{1,2}\.(?=\s|$)")
_NUMBER_DOT = re.compile(r"(?<![\w.])(\d{1,2})\.$")


def list_number(text: str, dot: int, last: int | None) -> int | None:
    """The number that the '.' at text[dot] closes, if it numbers a list item: at the start, after a
    colon or a line break, or the successor of the list number seen before (`last`)."""
    m = _NUMBER_DOT.search(text, 0, dot + 1)
    if m is None:
        return None
    k = int(m.group(1))
    before = text[: m.start()].rstrip(" \t")
    if not before or before[-1] in ":\n" or (last is not None and k == last + 1):
        return k
    return None


def sentence_end(text: str) -> re.Match | None:
    """The first '.', '!' or '?' followed by whitespace that is not a list number's dot."""
    last = None
    for m in SENTENCE_END.finditer(text):
        if m.group() == "." and (k := list_number(text, m.start(), last)) is not None:
            last = k
            continue
        return m
    return None


def first_sentence(text: str) -> str:
    """`text` up to its first sentence end (the papers ask for one sentence); the whole text when
    there is none."""
    m = sentence_end(text)
    return text[: m.end()] if m else text


@dataclass(frozen=True)
class ModelIdOnly:
    """An LLM as far as reading its texts from the store goes: its id keys the rows; it generates
    nothing (no weights loaded, no server contacted)."""

    model_id: str

    def generate_groups(self, groups, params):
        raise ReasonrecError(f"{self.model_id} is only an id here: texts can be read from the store, not generated")


def generate_flat(backend: LLMBackend, groups: list[list[Prompt]], params: GenerationParams) -> list[list[Generation]]:
    """`generate_groups` for backends without prefix sharing: one flat call, members kept adjacent
    (so a server-side prefix cache sees a group's prompts close together)."""
    try:
        flat = backend.generate([p for g in groups for p in g], params)
    except BackendUnavailable as err:
        if err.partial is not None:
            err.partial = _regroup(groups, err.partial)
        raise
    return _regroup(groups, flat)


def _regroup(groups: list[list], flat: list) -> list[list]:
    """`flat` (one entry per member of `groups`, in order) cut into lists the sizes of `groups`."""
    out, i = [], 0
    for g in groups:
        out.append(flat[i:i + len(g)])
        i += len(g)
    return out
