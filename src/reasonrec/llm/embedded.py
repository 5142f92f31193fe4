"""The embedded backend: a GGUF model run in-process with transformers on CPU.

Loading a GGUF through transformers dequantizes every tensor and converts the tokenizer (~25 s for
SmolLM2-135M). The result is saved once as a plain transformers checkpoint (safetensors + config +
tokenizer files) under `cache_dir()/models/<key>/`, so later loads take well under a second.

Generation goes through `CascadeEngine` (engine.py): shared-prefix prefill, a cascade KV cache and
continuous batching. `hf_generate` (plain `model.generate`) is kept as the reference it is tested
and benchmarked against.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonrec.assets import cache_dir, smollm2_gguf
from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import Capabilities, Generation, GenerationParams, Prompt
from reasonrec.llm.engine import CascadeEngine, Completion, Picker, SentenceStop, hf_generate, picker

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def converted_copy(gguf: Path) -> tuple[Path, dict]:
    """Directory of the plain-checkpoint copy of `gguf` (made on first use) and its meta.json.

    Keyed by file name + size, so a replaced file of another size gets a fresh copy; the content
    hash is computed once, at conversion, and recorded for `model_id`.
    """
    size = gguf.stat().st_size
    key = hashlib.sha256(f"{gguf.name}:{size}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / key
    meta_file = target / "meta.json"
    if meta_file.is_file():
        return target, json.loads(meta_file.read_text())

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the GGUF marker would make from_pretrained look for a .gguf again
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.parent / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # drops the tied lm_head copy
        tokenizer.save_pretrained(tmp)
        meta = {"source": gguf.name, "size": size, "sha256": _sha256(gguf)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(target)  # atomic: readers see a complete directory or none
        except OSError:
            if not meta_file.is_file():  # not a concurrent converter that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, json.loads(meta_file.read_text())


def embedded_model_id(gguf: str | Path, dtype: str = "float32") -> str:
    """Identity of a GGUF's weights at a compute dtype: part of every cache key of its texts."""
    path = Path(gguf)
    if not path.is_file():
        raise ReasonrecError(f"GGUF file not found: {path}")
    return _model_id(converted_copy(path)[1], dtype)


def _model_id(meta: dict, dtype: str) -> str:
    return f"{meta['source']}:sha256={meta['sha256'][:16]}:{dtype}"


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat), or None where unavailable."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _punctuation_tokens(tokenizer) -> torch.Tensor:
    """Ids of tokens made only of punctuation and whitespace (word-boundary markers aside)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = [i for i, p in enumerate(pieces)
            if p and (core := p.replace("\u2581", "").replace("\u0120", "").strip())
            and all(ch in ".\u2026!?,;:-" for ch in core)]
    return torch.tensor(keep, dtype=torch.long)


def _suppressing(pick: Picker, banned: torch.Tensor) -> Picker:
    def first(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[:, banned] = float("-inf")
        return pick(logits)
    return first


class CoreMeter:
    """How many cores other processes leave us, measured between two calls.

    With a sibling job on a 2-core box, two OpenMP threads wait on a descheduled partner and ran
    ~14x slower than one (measured: 16 profiles in 146 s vs 10.6 s), while on an idle box two are
    faster. So the thread count is re-picked before every batch from what the others used during
    the previous one: all cores' busy time less our own process's CPU time, per second of wall time.
    """

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self._last = None

    def free_cores(self) -> int:
        busy = _busy_cpu_seconds()
        now = (time.monotonic(), busy, time.process_time())
        last, self._last = self._last, now
        if busy is None:
            return self.cores
        if last is None:
            return 1  # unknown yet: one thread is never the disastrous choice
        wall = now[0] - last[0]
        if wall <= 0:
            return 1
        others = max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / wall)
        return max(1, min(self.cores, self.cores - int(others + 0.5)))


class EmbeddedBackend:
    """GGUF model on CPU. dtype: float32 (default) or bfloat16 (~20% slower on CPUs without AMX,
    and its greedy text drifts from fp32).

    threads: torch CPU threads. "auto" (default) re-picks before every batch from the cores other
    jobs leave free (`CoreMeter`); an int fixes it; None leaves torch's default (one per core).
    batch_size: prompts decoded together; send calls with at least batch_size / 2 groups so that
    finished rows can be replaced. One backend serves one thread at a time (a lock).
    """

    capabilities = Capabilities(batching=True, prefix_sharing=True, logprobs=True)

    def __init__(self, gguf: str | Path | None = None, *, dtype: str = "float32", threads: int | str | None = "auto",
                 batch_size: int = 64, prefill_tokens: int = 2048):
        if dtype not in DTYPES:
            raise ReasonrecError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        path = Path(gguf) if gguf is not None else smollm2_gguf()
        if not path.is_file():
            raise ReasonrecError(f"GGUF file not found: {path}")
        self.threads = threads
        self._cores = CoreMeter()
        if isinstance(threads, int):
            torch.set_num_threads(threads)
        directory, meta = converted_copy(path)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype]).eval()
        self.model_id = _model_id(meta, dtype)
        self.batch_size = batch_size
        self.engine = CascadeEngine(self.model, batch_size=batch_size, prefill_tokens=prefill_tokens)
        gen_eos = self.model.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._stops = {flag: SentenceStop(self.tokenizer, self.eos_ids, flag) for flag in (True, False)}
        self._lock = threading.Lock()

    @property
    def plain(self) -> bool:
        """A base model without a chat template (rendered as plain text)."""
        return self.tokenizer.chat_template is None

    @functools.cached_property
    def _punctuation(self) -> torch.Tensor:
        return _punctuation_tokens(self.tokenizer)

    def _first_pick(self, pick: Picker) -> Picker | None:
        # A base model copies the format line "...because..." and answers with a bare "...": its
        # answer may not start with punctuation (what `begin_suppress_tokens` does in HF generate).
        return _suppressing(pick, self._punctuation) if self.plain else None

    @classmethod
    def from_gguf(cls, path: str | Path, **kwargs) -> "EmbeddedBackend":
        return cls(path, **kwargs)

    # -- prompts -------------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The model's chat template with the assistant turn opened, then the forced prefix.

        A base model (no chat template, e.g. Gemma-3-270M) gets the messages as plain paragraphs and
        an "Answer:" cue; the forced prefix then makes it continue the sentence we want.
        """
        if self.plain:
            body = "\n\n".join(content for _, content in prompt.messages)
            answer = f"\n\nAnswer: {prompt.prefix}" if prompt.prefix else "\n\nAnswer:"
            return (self.tokenizer.bos_token or "") + body + answer
        messages = [{"role": role, "content": content} for role, content in prompt.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prompt.prefix

    def encode(self, prompt: Prompt) -> list[int]:
        # the template already holds BOS and turn markers
        return self.tokenizer(self.render(prompt), add_special_tokens=False).input_ids

    # -- LLMBackend ----------------------------------------------------------------------------

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[Generation]:
        return [g[0] for g in self.generate_groups([[p] for p in prompts], params)]

    def generate_groups(self, groups: list[list[Prompt]], params: GenerationParams) -> list[list[Generation]]:
        ids = [[self.encode(p) for p in g] for g in groups]
        stop = self._stops[params.stop_at_sentence_end]
        pick = picker(params.temperature, params.top_p, params.seed)
        done = self.generate_ids(ids, params.max_new_tokens, stop.done, pick, self._first_pick(pick))
        return [[Generation(text=stop.text(c.ids), tokens=len(c.ids), prompt_tokens=len(p),
                            finish_reason=c.finish_reason) for p, c in zip(gi, gd)]
                for gi, gd in zip(ids, done)]

    def generate_ids(self, groups: list[list[list[int]]], max_new_tokens: int, done: Callable[[list[int]], bool],
                     pick: Picker, first_pick: Picker | None = None) -> list[list[Completion]]:
        """The engine on token ids, with any stop rule (`done`) and token picker: for callers that
        render prompts themselves (the OpenAI-compatible server)."""
        with self._lock:
            if self.threads == "auto":
                torch.set_num_threads(self._cores.free_cores())
            return self.engine.generate(groups, max_new_tokens, done, pick, first_pick)

    def generate_reference(self, prompts: list[Prompt], params: GenerationParams,
                           batch_size: int | None = None) -> list[Generation]:
        """Plain greedy `model.generate` (left-padded batches): the baseline and test oracle."""
        ids = [self.encode(p) for p in prompts]
        stop = self._stops[params.stop_at_sentence_end]
        with self._lock:
            out = hf_generate(self.model, ids, params.max_new_tokens, stop, batch_size or self.batch_size, self.pad_id,
                              self._punctuation.tolist() if self.plain else None)
        return [Generation(text=stop.text(o), tokens=len(o), prompt_tokens=len(p),
                           finish_reason="length" if len(o) >= params.max_new_tokens and not stop.done(o) else "stop")
                for p, o in zip(ids, out)]

    def score(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens after its rendered prompt."""
        if len(prompts) != len(continuations):
            raise ReasonrecError(f"score: {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [(self.encode(p), self.tokenizer(c, add_special_tokens=False).input_ids)
                 for p, c in zip(prompts, continuations)]
        out: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start:start + self.batch_size]
                width = max(len(p) + len(c) for p, c in chunk)
                ids = torch.full((len(chunk), width), self.pad_id)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for i, (p, c) in enumerate(chunk):
                    ids[i, : len(p) + len(c)] = torch.tensor(p + c)
                    mask[i, : len(p) + len(c)] = 1
                logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
                for i, (p, c) in enumerate(chunk):
                    # the logits at position t predict token t + 1
                    rows = logprobs[i, len(p) - 1: len(p) + len(c) - 1]
                    out.append(float(rows.gather(1, torch.tensor(c)[:, None]).sum()))
        return out
