"""In-process vLLM backend (GPU machines only).

vLLM batches continuously and caches shared prompt prefixes by itself (`enable_prefix_caching`),
so groups are sent flat. Prompts are rendered with the model's chat template here and passed as
token ids, exactly as the embedded backend does, so both see the same tokens.
"""

from __future__ import annotations

from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import Capabilities, Generation, GenerationParams, Prompt, first_sentence, generate_flat

SENTENCE_STOPS = [". ", ".\n", "! ", "!\n", "? ", "?\n"]


def vllm_model_id(model: str) -> str:
    return f"vllm:{model}"


class VLLMBackend:
    """model: a Hugging Face id or local directory. Extra keyword arguments go to `vllm.LLM`
    (e.g. gpu_memory_utilization, max_model_len, dtype, tensor_parallel_size)."""

    capabilities = Capabilities(batching=True, prefix_sharing=True, logprobs=True)

    def __init__(self, model: str, **llm_kwargs):
        try:
            import vllm
        except ImportError:
            raise ReasonrecError("the vllm backend needs vLLM and a GPU: run `pip install vllm` on a GPU machine, "
                                 "or use `openai:MODEL@URL` against a vLLM server") from None
        self._vllm = vllm
        llm_kwargs.setdefault("enable_prefix_caching", True)
        self.llm = vllm.LLM(model=model, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = vllm_model_id(model)

    def encode(self, prompt: Prompt) -> list[int]:
        messages = [{"role": r, "content": c} for r, c in prompt.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text + prompt.prefix, add_special_tokens=False).input_ids

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[Generation]:
        sp = self._vllm.SamplingParams(
            max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p, seed=params.seed,
            stop=SENTENCE_STOPS if params.stop_at_sentence_end else None, include_stop_str_in_output=True)
        ids = [self.encode(p) for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": i} for i in ids], sp, use_tqdm=False)
        gens = []
        for prompt_ids, out in zip(ids, outs):
            c = out.outputs[0]
            text = first_sentence(c.text) if params.stop_at_sentence_end else c.text
            gens.append(Generation(text=text, tokens=len(c.token_ids), prompt_tokens=len(prompt_ids),
                                   finish_reason="length" if c.finish_reason == "length" else "stop"))
        return gens

    def generate_groups(self, groups: list[list[Prompt]], params: GenerationParams) -> list[list[Generation]]:
        return generate_flat(self, groups, params)

    def score(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        """Sum of the continuation tokens' log-probs, read from vLLM's prompt log-probs."""
        seqs = []
        for p, c in zip(prompts, continuations, strict=True):
            head = self.encode(p)
            seqs.append((len(head), head + self.tokenizer(c, add_special_tokens=False).input_ids))
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([{"prompt_token_ids": s} for _, s in seqs], sp, use_tqdm=False)
        # prompt_logprobs[t] maps token ids (at least the actual token t) to Logprob objects
        return [sum(out.prompt_logprobs[t][s[t]].logprob for t in range(n, len(s)))
                for (n, s), out in zip(seqs, outs)]
