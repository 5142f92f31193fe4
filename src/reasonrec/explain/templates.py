"""Versioned prompt templates (YAML files beside this module, one per domain) and their rendering.

A template renders to a backend-neutral `Prompt` (chat messages + forced answer start). The
template id + version and the rendered prompt both enter the cache key, so editing a text can
never silently reuse explanations written for the old one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import Prompt

TEMPLATE_DIR = Path(__file__).parent / "templates"
DOMAINS = ("movie", "product", "restaurant", "hotel", "book")
# Contrastive pairs are generated together so their shared prefix is computed once.
PAIRED_TASKS = {("positive", "negative"), ("alt_positive", "alt_negative")}


@dataclass(frozen=True)
class Task:
    name: str
    user: str
    prefix: str
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class TemplateSet:
    domain: str
    version: int
    item_noun: str
    item_text: str
    empty_history: str
    profile: Task
    tasks: dict
    variants: dict
    source: str

    def template_id(self, task: str) -> str:
        return f"{self.domain}/{task}@v{self.version}"

    def variant_tasks(self, variant: str) -> list[str]:
        if variant not in self.variants:
            raise ReasonrecError(f"unknown variant '{variant}' for domain '{self.domain}'; "
                                 f"choose one of {sorted(self.variants)}")
        return list(self.variants[variant])

    def strip_prefixes(self, variant: str) -> tuple[str, ...]:
        """The forced prefixes of the variant's texts, longest first (so a prefix that begins
        another is tried after it), for readers that embed texts without them."""
        return tuple(sorted({self.tasks[t].prefix for t in self.variant_tasks(variant)}, key=len, reverse=True))

    # --- rendering ---------------------------------------------------------------------

    @staticmethod
    def _fields(item: dict) -> dict:
        year = _year_text(item.get("feat_year"))
        return {"title": str(item.get("title") or item.get("item_id")), "year_paren": f" ({year})" if year else "",
                "categories": str(item.get("categories") or "unknown"), "description": str(item.get("description") or "")}

    def describe_item(self, item: dict) -> str:
        """Short text of an item from its metadata (used when no LLM profile exists)."""
        return self.item_text.format(**self._fields(item))

    def profile_prompt(self, item: dict, max_words: int = 25) -> Prompt:
        user = self.profile.user.format(item_text=self.describe_item(item), max_words=max_words)
        return Prompt.user(user, prefix=self.profile.prefix.format(**self._fields(item)))

    def render(self, task: str, history: list[str], candidate: str) -> Prompt:
        """`history` and `candidate` are item descriptions (profiles or short texts), oldest first."""
        if task not in self.tasks:
            raise ReasonrecError(f"domain '{self.domain}' has no task '{task}'; have {sorted(self.tasks)}")
        t = self.tasks[task]
        lines = "\n".join(f"{i}. {text}" for i, text in enumerate(history, start=1)) or self.empty_history
        return Prompt.user(t.user.format(history=lines, candidate=candidate), prefix=t.prefix)

    def max_new_tokens(self, task: str, default: int) -> int:
        return self.tasks[task].max_new_tokens or default


@functools.cache
def load_templates(domain: str, directory: str | None = None) -> TemplateSet:
    path = Path(directory or TEMPLATE_DIR) / f"{domain}.yaml"
    if not path.is_file():
        raise ReasonrecError(f"no prompt templates for domain '{domain}' ({path}); have {list(DOMAINS)}")
    raw = yaml.safe_load(path.read_text())
    try:
        tasks = {name: Task(name, spec["user"].strip(), spec["prefix"], spec.get("max_new_tokens"))
                 for name, spec in raw["tasks"].items()}
        profile = Task("profile", raw["profile"]["user"].strip(), raw["profile"]["prefix"])
        return TemplateSet(domain=raw["domain"], version=int(raw["version"]), item_noun=raw["item_noun"],
                           item_text=raw["item_text"], empty_history=raw["empty_history"], profile=profile,
                           tasks=tasks, variants={k: list(v) for k, v in raw["variants"].items()}, source=str(path))
    except (KeyError, TypeError) as err:
        raise ReasonrecError(f"{path}: malformed template file (missing {err})") from None


def word_cap_tokens(max_words: int) -> int:
    """A token budget that fits `max_words` English words (~1.4 tokens per word) plus the period."""
    return int(math.ceil(max_words * 1.4)) + 2


def _year_text(value) -> str:
    """Prepared data stores years as numbers (1995.0, NaN when unknown); older tables as text."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
