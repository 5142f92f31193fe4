"""Business insights from aggregated contrastive explanations (LR-Recsys section 5.5.3).

For one item, the words that distinguish its positive (and, separately, its negative) explanations
from the explanations of all other items: the weighted log-odds ratio with an informative Dirichlet
prior (Monroe, Colaresi & Quinn 2008). Plain word frequencies would rank words every explanation
uses ("enjoys", "story") on top; the log-odds z-score ranks a word by how much more often this
item's explanations use it than everyone else's, with the prior shrinking rare words.

Shared by `reasonrec insights` and the benchmark report.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import pandas as pd

_TOKEN = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")

# English function words plus the words every explanation repeats because the prompt asks for them.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each else ever few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just like likely
may me might more most much must my myself no nor not now of off on once only or other our ours
ourselves out over own rather same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves s t don doesn didn isn wasn won
consumer consumers user users customer customers watched watch watching movie movies film films
item items recommended recommendation one sentence reason reasons profile profiles
""".split())


def tokens(text: str, extra_stopwords: frozenset = frozenset()) -> list[str]:
    return [w for w in _TOKEN.findall(str(text or "").lower())
            if w not in STOPWORDS and w not in extra_stopwords and len(w) > 2]


def strip_prefix(text: str, prefixes) -> str:
    for p in prefixes or ():
        if text.startswith(p):
            return text[len(p):]
    return text


def log_odds(target: Counter, background: Counter, prior: Counter, prior_weight: float = 500.0) -> pd.DataFrame:
    """z-scores of the log-odds ratio of each target word vs the background, with an informative
    Dirichlet prior proportional to `prior` (total pseudo-count `prior_weight`)."""
    n_t, n_b, n_p = sum(target.values()), sum(background.values()), sum(prior.values())
    rows = []
    if n_t == 0 or n_p == 0:
        return pd.DataFrame(columns=["word", "count", "share", "z"])
    for w, y_t in target.items():
        a = prior_weight * prior.get(w, 0) / n_p
        if a <= 0:
            a = prior_weight / max(n_p, 1)
        y_b = background.get(w, 0)
        a0 = prior_weight
        delta = (math.log((y_t + a) / (n_t + a0 - y_t - a)) - math.log((y_b + a) / (n_b + a0 - y_b - a)))
        var = 1.0 / (y_t + a) + 1.0 / (y_b + a)
        rows.append((w, y_t, y_t / n_t, delta / math.sqrt(var)))
    return pd.DataFrame(rows, columns=["word", "count", "share", "z"]).sort_values(
        ["z", "count", "word"], ascending=[False, False, True], kind="stable").reset_index(drop=True)


def item_keywords(explanations: pd.DataFrame, samples: pd.DataFrame, item_id: str, top: int = 10,
                  columns=("positive", "negative"), strip_prefixes=(), min_count: int = 2, min_z: float = 1.0,
                  extra_stopwords=()) -> dict[str, pd.DataFrame]:
    """column -> table of the item's most distinctive words (word, count, share, z), best first:
    used at least `min_count` times about the item and over-represented by at least `min_z`.

    `explanations`: sample_id + one text column per task; `samples`: sample_id + item_id."""
    joined = samples[["sample_id", "item_id"]].merge(explanations, on="sample_id", how="inner")
    mine = joined["item_id"].astype(str) == str(item_id)
    extra = frozenset(extra_stopwords)
    out = {}
    for col in columns:
        if col not in joined.columns:
            continue
        texts = joined[col].fillna("").astype(str).map(lambda t: strip_prefix(t, strip_prefixes))
        target, background = Counter(), Counter()
        for text, is_mine in zip(texts, mine):
            (target if is_mine else background).update(tokens(text, extra))
        table = log_odds(target, background, target + background)
        table = table[(table["count"] >= min_count) & (table["z"] >= min_z)]
        out[col] = table.head(top).reset_index(drop=True)
    return out


def top_items(samples: pd.DataFrame, explanations: pd.DataFrame, n: int = 3, split: str = "test",
              column: str = "positive") -> list[str]:
    """The n items with the most explained samples in `split` (ties: smaller item id first)."""
    part = samples[samples["split"] == split][["sample_id", "item_id"]]
    have = explanations.loc[explanations[column].notna(), ["sample_id"]] if column in explanations else explanations[["sample_id"]]
    counts = part.merge(have, on="sample_id")["item_id"].astype(str).value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [item for item, _ in ranked[:n]]


def insights_for(samples: pd.DataFrame, items: pd.DataFrame, explanations: pd.DataFrame, item_ids, top: int = 10,
                 strip_prefixes=(), profiles: dict | None = None) -> list[dict]:
    """JSON-ready insights for each item: title, counts, top positive/negative keywords."""
    titles = dict(zip(items["item_id"].astype(str), items.get("title", items["item_id"]).astype(str)))
    out = []
    for item in item_ids:
        item = str(item)
        n_all = int((samples["item_id"].astype(str) == item).sum())
        n_test = int(((samples["item_id"].astype(str) == item) & (samples["split"] == "test")).sum())
        words = item_keywords(explanations, samples, item, top, strip_prefixes=strip_prefixes,
                              extra_stopwords=_title_noise(titles.get(item, "")))
        ids = samples.loc[samples["item_id"].astype(str) == item, "sample_id"]
        text_cols = [c for c in explanations.columns if c != "sample_id"]
        explained = int(explanations[explanations["sample_id"].isin(ids)][text_cols].notna().any(axis=1).sum())
        out.append({"item_id": item, "title": titles.get(item, item), "samples": n_all, "test_samples": n_test,
                    "explained": explained,
                    "profile": (profiles or {}).get(item),
                    "keywords": {col: [{"word": r.word, "count": int(r.count), "z": round(float(r.z), 2)}
                                       for r in table.itertuples()] for col, table in words.items()}})
    return out


def _title_noise(title: str) -> list[str]:
    # a release year in the title ("(1996)") is not an insight
    return [w for w in re.findall(r"\d+", title)]


def format_keywords(insight: dict) -> str:
    """A small plain-text table: one line per rank, positive and negative side by side."""
    pos = insight["keywords"].get("positive", [])
    neg = insight["keywords"].get("negative", [])
    lines = [f"{insight['title']} (item {insight['item_id']}; {insight['samples']} samples, "
             f"{insight['test_samples']} in test, {insight.get('explained', '?')} explained)"]
    if insight.get("profile"):
        lines.append(f"profile: {insight['profile']}")
    lines.append(f"{'rank':>4}  {'positive':<18} {'n':>4} {'z':>6}   {'negative':<18} {'n':>4} {'z':>6}")
    for i in range(max(len(pos), len(neg))):
        p = pos[i] if i < len(pos) else None
        q = neg[i] if i < len(neg) else None
        left = f"{p['word']:<18} {p['count']:>4} {p['z']:>6.2f}" if p else " " * 30
        right = f"{q['word']:<18} {q['count']:>4} {q['z']:>6.2f}" if q else ""
        lines.append(f"{i + 1:>4}  {left}   {right}")
    if not pos and not neg:
        lines.append("      (no distinctive words: too few explanations of this item)")
    return "\n".join(lines)


def profiles_of(explainer, items: pd.DataFrame, item_ids) -> dict:
    """Item id -> its LLM-written profile from the store (None where there is none)."""
    sub = items[items["item_id"].astype(str).isin({str(i) for i in item_ids})]
    jobs = explainer.profile_jobs(sub)
    found = explainer.store.get_many([j.key for j in jobs.values()])
    return {str(i): (found[j.key].text if j.key in found and found[j.key].status != "failed" else None)
            for i, j in jobs.items()}
