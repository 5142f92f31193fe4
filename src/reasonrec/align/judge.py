"""Judges: P(the consumer likes the candidate | the explanation, the candidate's text).

A judge reads the explanation and the candidate item only — never the history, never the label —
so what it recovers is what the explanation says about the user's intention.

* `YesNoJudge` (default): the frozen base LLM. The judge text (`judge_text`) ends where the answer
  goes; P(Yes) = softmax over the next-token logits of " Yes" and " No" (other tokens ignored).
  With a LoRA policy it runs inside `policy.disable_adapter()`, i.e. on the base weights, with no
  extra training and no second copy of the model.
* `ClassifierJudge` (optional): TF-IDF + logistic regression fitted on train-split explanations
  and labels. Cheaper and sharper, but it is trained on the labels it then rewards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from reasonrec.align.kv import continue_hidden, pad_right, prefix_kv


# A few-shot completion prompt, not a chat: on the 135M model it separates clearly positive from
# clearly negative reasons far better than any zero-shot chat wording we tried (hand-made set of 20:
# AUC 0.90 vs 0.31-0.82; see docs/expctr.md). The examples are fixed text, not training data, and
# include "watched because ... but dislikes" and "did not watch because ... but loves", so the
# judge reads the reason, not the template's opening words.
FEWSHOT = (
    ("The consumer watched this {noun} because they love action films and this is an exciting action film.",
     "Die Hard (1988); genres: Action, Thriller", "Yes"),
    ("The consumer did not watch this {noun} because they find horror films disturbing.",
     "Scream (1996); genres: Horror, Thriller", "No"),
    ("The consumer did not watch this {noun} because they prefer serious dramas to silly comedies.",
     "Dumb and Dumber (1994); genres: Comedy", "No"),
    ("The consumer watched this {noun} because its space adventure matches the sci-fi films they enjoyed.",
     "Star Wars (1977); genres: Action, Adventure, Sci-Fi", "Yes"),
    ("The consumer watched this {noun} because it was on TV, although they usually find westerns dull.",
     "Tombstone (1993); genres: Western", "No"),
    ("The consumer did not watch this {noun} because they were traveling, but its witty romance fits their "
     "favorite films.", "Sleepless in Seattle (1993); genres: Comedy, Romance", "Yes"),
)
QUERY = "Reason: {explanation}\n{Noun}: {candidate}\nWould the consumer like it?"


def judge_text(explanation: str, candidate: str, noun: str = "movie") -> str:
    """The judge's input: the few-shot block, then the query; the next token is " Yes" or " No"."""
    shots = "".join(QUERY.format(explanation=e.format(noun=noun), Noun=noun.capitalize(), candidate=c) + f" {a}\n\n"
                    for e, c, a in FEWSHOT)
    return shots + QUERY.format(explanation=" ".join(explanation.split()), Noun=noun.capitalize(), candidate=candidate)


@dataclass
class YesNoJudge:
    """P(Yes) from a causal LM (`lm`: a *ForCausalLM, LoRA layers possibly injected).

    `context` wraps every forward: `policy.disable_adapter` makes it the frozen base model. The
    few-shot block's keys/values are computed once (the judge never changes) and each call only
    runs its own query tokens; `logits(..., cached=False)` is the plain full-text reference.
    """

    lm: torch.nn.Module
    tokenizer: object
    noun: str = "movie"
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    batch_size: int = 32
    yes: str = " Yes"
    no: str = " No"

    def __post_init__(self):
        ids = [self.tokenizer(w, add_special_tokens=False).input_ids for w in (self.yes, self.no)]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"judge answers must be single tokens, got {ids}")
        self.answer_ids = torch.tensor([ids[0][0], ids[1][0]])
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        # the shared block as tokenised in context: the common prefix of two different queries
        a, b = self.encode("Alpha.", "A"), self.encode("Zulu.", "Z")
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) - 1)
        self._prefix = a[:n]
        self._kv = None

    def encode(self, explanation: str, candidate: str) -> list[int]:
        return self.tokenizer(judge_text(explanation, candidate, self.noun), add_special_tokens=False).input_ids

    def _answer_logodds(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.lm.get_output_embeddings().weight[self.answer_ids]  # only the two answer rows
        two = hidden.float() @ w.float().T
        return two[:, 0] - two[:, 1]

    def logits(self, explanations: list[str], candidates: list[str], cached: bool = True) -> np.ndarray:
        """log P(Yes) - log P(No) per pair (the judge's log-odds of Yes)."""
        seqs = [self.encode(e, c) for e, c in zip(explanations, candidates)]
        n = len(self._prefix)
        out = np.empty(len(seqs))
        order = np.argsort([len(s) for s in seqs], kind="stable")  # little padding
        with torch.inference_mode(), self.context():
            if cached and self._kv is None:
                self._kv = prefix_kv(self.lm, self._prefix)[0]
            for start in range(0, len(seqs), self.batch_size):
                idx = order[start:start + self.batch_size]
                chunk = [seqs[i] for i in idx]
                if cached and all(s[:n] == self._prefix and len(s) > n for s in chunk):
                    hidden, mask = continue_hidden(self.lm, self._kv, n, [s[n:] for s in chunk], self.pad_id)
                else:
                    hidden, mask = _full_hidden(self.lm, chunk, self.pad_id)
                last = hidden[torch.arange(len(chunk)), mask.sum(1) - 1]
                out[idx] = self._answer_logodds(last).numpy()
        return out

    def prob_yes(self, explanations: list[str], candidates: list[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(explanations, candidates)))


def _full_hidden(lm, seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_right(seqs, pad_id)
    return lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask


class ClassifierJudge:
    """TF-IDF (word 1-2 grams) + logistic regression: P(label = 1 | explanation, candidate text)."""

    def __init__(self, C: float = 1.0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        self.clf = LogisticRegression(C=C, max_iter=1000)

    @staticmethod
    def _text(explanations, candidates):
        return [f"{e} || {c}" for e, c in zip(explanations, candidates)]

    def fit(self, explanations: list[str], candidates: list[str], labels) -> "ClassifierJudge":
        self.clf.fit(self.vec.fit_transform(self._text(explanations, candidates)), np.asarray(labels, int))
        return self

    def prob_yes(self, explanations: list[str], candidates: list[str]) -> np.ndarray:
        return self.clf.predict_proba(self.vec.transform(self._text(explanations, candidates)))[:, 1]

    def logits(self, explanations, candidates) -> np.ndarray:
        p = np.clip(self.prob_yes(explanations, candidates), 1e-6, 1 - 1e-6)
        return np.log(p) - np.log1p(-p)
