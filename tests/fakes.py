"""FakeLLM: a stand-in backend for unit tests of parsing and control flow only.

It never pretends to be a model: its answers are deterministic strings derived from the prompt,
so tests can check that the right prompt produced the right stored row.
"""

from __future__ import annotations

import hashlib

from reasonrec.llm.base import Capabilities, Generation, GenerationParams, Prompt, generate_flat


class FakeLLM:
    capabilities = Capabilities(batching=True, prefix_sharing=False, logprobs=False)

    def __init__(self, model_id: str = "fake-llm", fail_every: int = 0, reply=None):
        self.model_id = model_id
        self.calls: list[int] = []      # batch sizes seen
        self.group_sizes: list[int] = []
        self.prompts: list[Prompt] = []
        self.fail_every = fail_every    # every n-th prompt comes back as a backend error
        self.reply = reply

    def _answer(self, prompt: Prompt) -> str:
        if self.reply is not None:
            return self.reply(prompt)
        digest = hashlib.sha1(prompt.canonical().encode()).hexdigest()[:6]
        return f" the consumer likes item {digest} and the movie fits. Extra sentence here."

    def generate(self, prompts, params: GenerationParams):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            self.prompts.append(p)
            if self.fail_every and len(self.prompts) % self.fail_every == 0:
                out.append(Generation("", finish_reason="error", error="fake failure"))
            else:
                out.append(Generation(self._answer(p), tokens=12, prompt_tokens=len(p.canonical()) // 4))
        return out

    def generate_groups(self, groups, params: GenerationParams):
        self.group_sizes.extend(len(g) for g in groups)
        return generate_flat(self, groups, params)


class DiesOnce:
    """A backend recipe (picklable, for engines that build backends in other processes): the backend
    `make()` builds (default: a FakeLLM), whose process exits on its `after`-th batch the first time
    any process gets there (the marker file records it), as a worker killed mid-run would."""

    def __init__(self, marker, after: int = 2, make=None):
        self.marker, self.after, self.make = str(marker), after, make

    def __call__(self):
        return _Dying(self.make() if self.make else FakeLLM(), self.marker, self.after)


class _Dying:
    def __init__(self, inner, marker: str, after: int):
        self.inner, self.marker, self.after, self.batches = inner, marker, after, 0
        self.model_id = inner.model_id

    def generate_groups(self, groups, params: GenerationParams):
        import os
        from pathlib import Path

        self.batches += 1
        if self.batches == self.after and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.inner.generate_groups(groups, params)


class GoesAway:
    """A backend recipe: a FakeLLM that answers its first `answered` prompts of a batch, then loses
    its server (BackendUnavailable with those answers as `partial`)."""

    def __init__(self, answered: int = 1):
        self.answered = answered

    def __call__(self):
        return _GoneAway(self.answered)


class _GoneAway(FakeLLM):
    def __init__(self, answered: int):
        super().__init__()
        self.answered = answered

    def generate_groups(self, groups, params: GenerationParams):
        from reasonrec.errors import BackendUnavailable

        done = super().generate_groups(groups, params)
        flat = iter(range(sum(len(g) for g in groups)))
        partial = [[gen if next(flat) < self.answered else None for gen in group] for group in done]
        raise BackendUnavailable("http://gone:8000/v1: connection refused", partial=partial)
