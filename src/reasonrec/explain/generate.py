"""Explanation jobs: item profiles (the CoT step), then the variant's prompts for every sample.

Everything goes through the store: a prompt whose key is already there is never sent again, and
results are committed batch by batch, so a killed job resumes where it stopped. Prompts are sent
in order of length so that batches pad little, and a sample's positive and negative prompt travel
together so backends that can share their common prefix compute it once.

A backend that says it cannot go on (a server that cannot be reached, a refused key, an unknown
model: a `ReasonrecError`) stops the run at once instead of failing batch after batch; only texts
the model produced are stored, so a rerun makes the rest.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

import pandas as pd
from tqdm.auto import tqdm

from reasonrec.errors import BackendUnavailable, ReasonrecError
from reasonrec.explain.cleanup import Cleaned, clean
from reasonrec.explain.store import Entry, ExplanationStore, make_key
from reasonrec.explain.templates import PAIRED_TASKS, TemplateSet, word_cap_tokens
from reasonrec.llm.base import Generation, GenerationParams, Prompt


@dataclass
class ExplainConfig:
    variant: str = "contrastive"
    profiles: bool = True           # LR-Recsys' CoT step: describe items by an LLM-written profile
    profile_words: int = 25         # "succinct": profiles make up most of a prompt's length
    max_new_tokens: int = 48
    batch_size: int = 128           # samples per batch; the engine refills freed slots within a batch
    retry_failed: bool = False


@dataclass
class RunSummary:
    stage: str
    requested: int = 0
    cached: int = 0
    generated: int = 0
    repaired: int = 0
    failed: int = 0
    errors: int = 0                 # backend errors; not stored, so a rerun retries them
    seconds: float = 0.0
    new_tokens: int = 0
    prompt_tokens: int = 0

    @property
    def per_second(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["explanations_per_second"] = round(self.per_second, 3)
        d["mean_prompt_tokens"] = round(self.prompt_tokens / self.generated, 1) if self.generated else None
        return d

    def line(self) -> str:
        return (f"{self.stage}: {self.requested} requested, {self.cached} cached, {self.generated} generated "
                f"({self.repaired} repaired, {self.failed} failed, {self.errors} backend errors) in "
                f"{self.seconds:.1f} s = {self.per_second:.2f}/s, {self.new_tokens} new tokens"
                + (f", {self.prompt_tokens / self.generated:.0f} prompt tokens each" if self.generated else ""))


@dataclass
class _Job:
    key: str
    task: str
    template_id: str
    prompt: Prompt
    params: GenerationParams
    group: int = 0                  # jobs with the same group share a prefix (one sample's pos/neg)
    sample_ids: list = field(default_factory=list)


class Explainer:
    def __init__(self, backend, store: ExplanationStore, templates: TemplateSet, config: ExplainConfig | None = None,
                 engine=None):
        """engine: where the prompts are generated when not by `backend` in this process, e.g.
        `reasonrec.explain.ray_engine.RayEngine`; `backend` then only needs its `model_id`. Its
        `generate(requests)` takes [(prompt groups, params)] and yields (index, results or exception)
        in any order; cleaning and storing stay here."""
        self.backend, self.store, self.templates = backend, store, templates
        self.cfg = config or ExplainConfig()
        self.engine = engine

    # --- keys and prompts (cheap: no model needed) -----------------------------------------

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def _params(self, task: str) -> GenerationParams:
        if task == "profile":
            return GenerationParams(max_new_tokens=word_cap_tokens(self.cfg.profile_words))
        return GenerationParams(max_new_tokens=self.templates.max_new_tokens(task, self.cfg.max_new_tokens))

    def _job(self, task: str, prompt: Prompt, group: int = 0) -> _Job:
        tid = self.templates.template_id(task)
        params = self._params(task)
        return _Job(make_key(self.model_id, tid, prompt, params), task, tid, prompt, params, group)

    def profile_jobs(self, items: pd.DataFrame) -> dict[str, _Job]:
        # each profile is its own group: they share nothing beyond the instruction head
        return {row["item_id"]: self._job("profile", self.templates.profile_prompt(row, self.cfg.profile_words), g)
                for g, row in enumerate(items.to_dict("records"))}

    def item_texts(self, items: pd.DataFrame, progress: bool = True, generate: bool = True
                   ) -> tuple[dict[str, str], RunSummary | None]:
        """Item id -> the text that stands for it in prompts: its LLM profile (generated if missing
        and `generate`), or its short metadata description when profiles are off or one failed."""
        records = {r["item_id"]: r for r in items.to_dict("records")}
        if not self.cfg.profiles:
            return {i: self.templates.describe_item(r) for i, r in records.items()}, None
        jobs = self.profile_jobs(items)
        summary = self._execute(list(jobs.values()), "profiles", progress) if generate else None
        found = self.store.get_many([j.key for j in jobs.values()])
        texts = {}
        for item_id, job in jobs.items():
            entry = found.get(job.key)
            ok = entry is not None and entry.status != "failed"
            texts[item_id] = entry.text if ok else self.templates.describe_item(records[item_id])
        return texts, summary

    def sample_jobs(self, samples: pd.DataFrame, texts: dict[str, str]) -> list[_Job]:
        tasks = self.templates.variant_tasks(self.cfg.variant)
        jobs = []
        for group, row in enumerate(samples[["sample_id", "item_id", "history"]].itertuples(index=False)):
            history = [texts[i] for i in row.history]
            candidate = texts[row.item_id]
            for task in tasks:
                job = self._job(task, self.templates.render(task, history, candidate), group)
                job.sample_ids = [row.sample_id]
                jobs.append(job)
        return jobs

    # --- running ---------------------------------------------------------------------------

    def run(self, samples: pd.DataFrame, items: pd.DataFrame, progress: bool = True,
            bar_position: int = 0) -> list[RunSummary]:
        """Profiles, then the variant's texts. bar_position: the progress bar's line (one per worker)."""
        texts, profile_summary = self.item_texts(needed_items(samples, items), progress)
        summary = self._execute(self.sample_jobs(samples, texts), f"explanations[{self.cfg.variant}]", progress,
                                bar_position)
        return [s for s in (profile_summary, summary) if s is not None]

    def lookup(self, samples: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
        """sample_id + one text column per task of the variant (None where not generated yet).
        Never calls the LLM for explanations (profiles must already be in the store)."""
        texts, _ = self.item_texts(needed_items(samples, items), progress=False, generate=False)
        jobs = self.sample_jobs(samples, texts)
        found = self.store.get_many([j.key for j in jobs])
        out: dict[int, dict] = {}
        for job in jobs:
            e = found.get(job.key)
            out.setdefault(job.sample_ids[0], {})[job.task] = e.text if e and e.status != "failed" else None
        frame = pd.DataFrame.from_dict(out, orient="index")
        frame.index.name = "sample_id"
        return frame.reset_index()

    def _execute(self, jobs: list[_Job], stage: str, progress: bool, bar_position: int = 0) -> RunSummary:
        # identical prompts (two samples with the same history and candidate) are generated once
        unique: dict[str, _Job] = {}
        for job in jobs:
            unique.setdefault(job.key, job)
        summary = RunSummary(stage, requested=len(unique))
        present = self.store.get_many(list(unique))
        if self.cfg.retry_failed:  # failures, and outputs today's clean-up rejects (made before a fix)
            present = {k: e for k, e in present.items() if e.status != "failed" and self._clean(
                unique[k], e.raw, "length" if "hit_token_limit" in e.repairs else "stop").ok}
        summary.cached = len(present)
        pending = [j for k, j in unique.items() if k not in present]
        if not pending:
            return summary
        check = getattr(self.backend, "check", None)
        if check is not None:  # a server that cannot be reached says so before the first prompt
            check()
        batches = self._batches(pending)
        started = time.perf_counter()
        bar = tqdm(total=len(pending), desc=stage, unit="gen", disable=not progress, smoothing=0.05,
                   position=bar_position)
        requests = [(self._group(batch), batch[0].params) for batch in batches]
        outcomes = (self.engine.generate([([[j.prompt for j in g] for g in groups], params)
                                          for groups, params in requests])
                    if self.engine is not None else self._generate_here(requests))
        for index, results in outcomes:
            (groups, _), batch = requests[index], batches[index]
            err = results if isinstance(results, Exception) else None
            if isinstance(err, BackendUnavailable):
                if err.partial is not None:  # what the server answered before it went away
                    self._store(groups, err.partial, summary)
                bar.close()
                raise BackendUnavailable(f"{err}\n{stage}: stopped with {summary.generated} of {len(pending)} texts "
                                         "made and stored; a rerun makes the rest") from None
            if isinstance(err, ReasonrecError):  # key refused, unknown model, bad parameters: every batch would fail alike
                bar.close()
                raise err
            if err is not None:  # one batch failing must not lose the batches before it
                summary.errors += len(batch)
                bar.write(f"{stage}: batch of {len(batch)} failed: {type(err).__name__}: {err}")
                bar.update(len(batch))
                continue
            self._store(groups, results, summary)
            bar.update(len(batch))
            summary.seconds = time.perf_counter() - started
            bar.set_postfix(rate=f"{summary.per_second:.2f}/s", failed=summary.failed)
        bar.close()
        summary.seconds = time.perf_counter() - started
        return summary

    def _generate_here(self, requests):
        """(batch index, results or the exception the backend raised), batch after batch, in order."""
        for index, (groups, params) in enumerate(requests):
            try:
                yield index, self.backend.generate_groups([[j.prompt for j in g] for g in groups], params)
            except Exception as err:
                yield index, err

    def _store(self, groups: list[list[_Job]], results: list[list[Generation | None]], summary: RunSummary) -> None:
        """One commit for a batch's answers; backend errors (and prompts never answered: None) are
        counted, not stored, so a rerun asks again."""
        entries = []
        for group, outs in zip(groups, results):
            for job, gen in zip(group, outs):
                entry = self._entry(job, gen) if gen is not None else None
                if entry is None:
                    summary.errors += 1
                    continue
                entries.append(entry)
                summary.generated += 1
                summary.new_tokens += gen.tokens
                summary.prompt_tokens += gen.prompt_tokens
                summary.repaired += entry.status == "repaired"
                summary.failed += entry.status == "failed"
        self.store.put_many(entries)

    def _batches(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Batches of whole groups with equal decoding params, in order of prompt length."""
        by_group: dict[tuple, list[_Job]] = {}
        for job in jobs:
            by_group.setdefault((job.params, job.group, job.task in _PAIRED), []).append(job)
        ordered = sorted(by_group.values(), key=lambda g: (repr(g[0].params), len(g[0].prompt.canonical())))
        batches, current, size = [], [], 0
        for group in ordered:
            if current and (size >= self.cfg.batch_size or group[0].params != current[0].params):
                batches.append(current)
                current, size = [], 0
            current.extend(group)
            size += 1
        if current:
            batches.append(current)
        return batches

    @staticmethod
    def _group(batch: list[_Job]) -> list[list[_Job]]:
        groups: dict[tuple, list[_Job]] = {}
        for job in batch:
            groups.setdefault((job.group, job.task in _PAIRED), []).append(job)
        return list(groups.values())

    @staticmethod
    def _clean(job: _Job, text: str, finish_reason: str) -> Cleaned:
        if job.task == "direct":
            return _parse_rating(text)
        return clean(job.prompt.prefix, text, finish_reason, min_words=1 if job.task in ("aspects", "profile") else 3)

    def _entry(self, job: _Job, gen: Generation) -> Entry | None:
        if gen.finish_reason == "error":
            return None
        cleaned = self._clean(job, gen.text, gen.finish_reason)
        status = "failed" if not cleaned.ok else ("repaired" if cleaned.repairs else "ok")
        tags = ",".join(cleaned.repairs + ([cleaned.reason] if cleaned.reason else []))
        return Entry(job.key, self.model_id, job.template_id, job.task, cleaned.text, gen.text, status, tags,
                     gen.tokens, gen.prompt_tokens, time.time())


_PAIRED = {t for pair in PAIRED_TASKS for t in pair}


def shard_samples(samples: pd.DataFrame, shard: str) -> pd.DataFrame:
    """The part I of N ("I/N") of the samples: sample_id % N == I. Processes on disjoint shards share
    one store safely (WAL, one commit per batch); item profiles they both need may be made twice."""
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ReasonrecError(f"--shard {shard!r}: expected I/N with integers, e.g. 0/2") from None
    if not 0 <= i < n:
        raise ReasonrecError(f"--shard {shard!r}: need 0 <= I < N")
    return samples[samples["sample_id"] % n == i]


def needed_items(samples: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The items a set of samples mentions: candidates and history items."""
    needed = set(samples["item_id"]) | {i for h in samples["history"] for i in h}
    return items[items["item_id"].isin(needed)]
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _parse_rating(text: str) -> Cleaned:
    m = _NUMBER.search(text)
    if not m:
        return Cleaned("", False, [], "no_number")
    value = float(m.group())
    if not 1 <= value <= 5:
        return Cleaned(m.group(), False, [], "out_of_range")
    return Cleaned(m.group(), True, [] if text.strip() == m.group() else ["extracted_number"])
