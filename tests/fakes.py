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
