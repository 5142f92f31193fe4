"""The ExpCTR three-stage loop, resumable, with its evaluation and report.

Per round r = 1..R:
  ctr(r) — stage 1: the CTR model. r = 1: an ID-based zoo model (`backbone`, no text) on the
           whole dataset. r >= 2: ExpCTR-Aug — the same backbone fed the round r-1 aligned
           explanations (encoded), on the sub-slice that has them. Its predicted probability q
           for each RL prompt's pair is the IC target.
  lc(r)  — stage 2: GRPO on the generator with the LC reward (+ format).
  ic(r)  — stage 3: GRPO with IC (+ LC + format) against ctr(r).
  generate(r) — the aligned adapter (merged) writes explanations for every sample of the
           sub-slice (train/valid/test) into the store, keyed by the adapter's hash.
Then, once: evaluate (explanation quality on the sub-slice's test split, aligned vs zero-shot),
aug (ExpCTR-Aug rows over seeds: backbone alone / + zero-shot / + aligned explanations on the
same sub-slice), report (reward curves PNG, CSV, results tables, before/after examples).

The generator's prompts are the domain template's contrastive prompts (history + candidate), so
they never contain a label. RL prompts come from train-split samples only, and rewards read
labels through `TrainLabels`, which holds train labels only. The test split's labels are read
by `evaluate` and `aug` for their metrics, after training.

Everything lands under `out/` (state.json says which stages are done); an RL stage checkpoints
its adapter + optimizer every `checkpoint_every` steps and resumes from the latest one.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reasonrec.align.policy import LoraSettings
from reasonrec.align.rewards import RewardWeights
from reasonrec.align.trainer import GRPOSettings, RLPrompt
from reasonrec.errors import ReasonrecError

STAGES = ("ctr", "lc", "ic", "generate", "evaluate", "aug", "report")


@dataclass
class AlignConfig:
    dataset: str = "artifacts/data/ml-100k-bench"
    out: str = "artifacts/align/ml-100k-bench"
    store: str = "artifacts/store/explanations.sqlite"
    bench_dir: str | None = "benchmarks/expctr"     # where `report` writes curves and tables
    backbone: str = "deepfm"                        # its settings: reasonrec.config (the model's defaults)
    encoder: str = "autoencoder"                    # how ExpCTR-Aug encodes explanations
    variant: str = "contrastive"
    profiles: bool = False                          # item profiles in prompts (must match the zero-shot run)
    users: int | None = 150                         # deterministic sub-slice for generation + Aug; None = all
    rl_samples: int = 128                           # train samples of the sub-slice used as RL prompts (x2 tasks)
    calib_samples: int = 32                         # of those, used to calibrate the judge's intercept per task
    probe_samples: int = 16                         # other train samples: greedy probe of the policy (x2 tasks)
    probe_every: int = 8                            # steps between probes (and at each stage's start and end)
    rounds: int = 1
    steps_lc: int = 36
    steps_ic: int = 36
    checkpoint_every: int = 4
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    weights_lc: RewardWeights = field(default_factory=lambda: RewardWeights(lc=1.0, ic=0.0, fmt=0.5))
    weights_ic: RewardWeights = field(default_factory=lambda: RewardWeights(lc=1.0, ic=1.0, fmt=0.5))
    seeds: tuple = (0, 1, 2, 3, 4)
    gen_batch_size: int = 32
    threads: int | None = None
    examples: int = 5
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict) -> "AlignConfig":
        raw = dict(raw)
        nested = {"grpo": GRPOSettings, "lora": LoraSettings, "weights_lc": RewardWeights, "weights_ic": RewardWeights}
        for key, klass in nested.items():
            if isinstance(raw.get(key), dict):
                raw[key] = klass(**raw[key])
        if "seeds" in raw:
            raw["seeds"] = tuple(raw["seeds"])
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


# ------------------------------------------------------------------------------------------
# data helpers (no model needed)


def sub_slice(data, users: int | None):
    from reasonrec.data.prepare import restrict_users

    return restrict_users(data, users)


def rl_sample_ids(samples: pd.DataFrame, n: int, seed: int) -> list[int]:
    """n train-split sample ids (seeded). Raises if asked to draw from anything but train."""
    train = samples[samples["split"] == "train"]
    ids = sorted(train["sample_id"].astype(int).tolist())
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def rl_prompts(explainer, samples: pd.DataFrame, items: pd.DataFrame, sample_ids: list[int]) -> list[RLPrompt]:
    """The template's prompts for these samples exactly as the Explainer renders them (same item
    texts, same tasks), plus the candidate's short text for the judge."""
    sub = samples[samples["sample_id"].isin(sample_ids)]
    if (sub["split"] != "train").any():
        raise ReasonrecError("RL prompts must come from the train split only")
    needed = set(sub["item_id"]) | {i for h in sub["history"] for i in h}
    texts, _ = explainer.item_texts(items[items["item_id"].isin(needed)], progress=False)
    by_item = {r["item_id"]: r for r in items.to_dict("records")}
    cand = dict(zip(sub["sample_id"], sub["item_id"]))
    return [RLPrompt(job.sample_ids[0], job.task, job.prompt, explainer.templates.describe_item(by_item[cand[job.sample_ids[0]]]))
            for job in explainer.sample_jobs(sub, texts)]


def batch_for_step(pool: list, step: int, size: int, seed: int) -> list:
    """The prompts of step `step` (0-based): consecutive slices of seeded per-epoch permutations
    of the pool, so a resumed run draws exactly what an uninterrupted one would."""
    out, pos = [], step * size
    while len(out) < size:
        epoch, offset = divmod(pos, len(pool))
        perm = np.random.default_rng([seed, epoch]).permutation(len(pool))
        take = min(size - len(out), len(pool) - offset)
        out.extend(pool[i] for i in perm[offset:offset + take])
        pos += take
    return out


def lookup_with_status(explainer, samples: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Explainer.lookup plus the store status of each text (`<task>_status`: ok | repaired |
    failed | missing)."""
    table = explainer.lookup(samples, items)
    needed = set(samples["item_id"]) | {i for h in samples["history"] for i in h}
    texts, _ = explainer.item_texts(items[items["item_id"].isin(needed)], progress=False)
    jobs = explainer.sample_jobs(samples, texts)
    found = explainer.store.get_many([j.key for j in jobs])
    status: dict[int, dict] = {}
    for job in jobs:
        e = found.get(job.key)
        status.setdefault(job.sample_ids[0], {})[f"{job.task}_status"] = e.status if e else "missing"
    st = pd.DataFrame.from_dict(status, orient="index")
    st.index.name = "sample_id"
    return table.merge(st.reset_index(), on="sample_id", how="left")


class _Keyed:
    """A backend stand-in that only names a model (for store lookups without loading weights)."""

    def __init__(self, model_id: str):
        self.model_id = model_id


# ------------------------------------------------------------------------------------------
# the run


class AlignRun:
    def __init__(self, cfg: AlignConfig, echo=print, progress: bool = True):
        self.cfg = cfg
        self.echo = echo
        self.progress = progress
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_file = self.out / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
        self._data = self._sub = None
        self._backend = self._policy = None
        self._fresh = False

    # -- bookkeeping ------------------------------------------------------------------------

    def _save_state(self):
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.state_file)

    def done(self, key: str) -> bool:
        return bool(self.state.get(key, {}).get("done"))

    def mark(self, key: str, **info):
        self.state[key] = {"done": True, "at": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        self._save_state()

    @property
    def data(self):
        if self._data is None:
            from reasonrec.data.prepare import load_prepared

            self._data = load_prepared(self.cfg.dataset)
        return self._data

    @property
    def sub(self):
        if self._sub is None:
            self._sub = sub_slice(self.data, self.cfg.users)
        return self._sub

    @property
    def templates(self):
        from reasonrec.explain.templates import load_templates

        return load_templates(self.data.card.get("domain", "movie"))

    def explainer(self, backend):
        from reasonrec.explain.generate import ExplainConfig, Explainer
        from reasonrec.explain.store import ExplanationStore

        return Explainer(backend, ExplanationStore(self.cfg.store), self.templates,
                         ExplainConfig(variant=self.cfg.variant, profiles=self.cfg.profiles,
                                       batch_size=self.cfg.gen_batch_size))

    def _threads(self):
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)

    # -- main -------------------------------------------------------------------------------

    def run(self, stages=("all",)) -> dict:
        wanted = set(STAGES) if "all" in stages else set(stages)
        unknown = wanted - set(STAGES)
        if unknown:
            raise ReasonrecError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)} or all")
        self._threads()
        started = time.perf_counter()
        for r in range(1, self.cfg.rounds + 1):
            if "ctr" in wanted:
                self.stage_ctr(r)
            if "lc" in wanted:
                self.stage_rl(r, "lc")
            if "ic" in wanted:
                self.stage_rl(r, "ic")
            if "generate" in wanted:
                self.stage_generate(r)
        for name in ("evaluate", "aug", "report"):
            if name in wanted:
                getattr(self, f"stage_{name}")()
        self.echo(f"align: done in {time.perf_counter() - started:.0f} s; state in {self.state_file}")
        return self.state

    # -- stage 1: the CTR model ---------------------------------------------------------------

    def _rec_config(self, with_text: bool, seed: int = 0):
        from reasonrec.config import resolve

        given = {"model": self.cfg.backbone, "explanations": "text" if with_text else "none",
                 "encoder": self.cfg.encoder, "seed": seed}
        if with_text:
            given["text_columns"] = tuple(self.templates.variant_tasks(self.cfg.variant))
            given["strip_prefixes"] = tuple(self.templates.strip_prefixes(self.cfg.variant))
        return resolve(given)

    def ctr_model(self, r: int):
        from reasonrec.estimator import Recommender

        return Recommender.load(self.out / f"round{r}" / "ctr")

    def ctr_inputs(self, r: int):
        """(data the round-r CTR model reads, its explanations table or None)."""
        if r == 1:
            return self.data, None
        return self.sub, self.aligned_table(r - 1)

    def stage_ctr(self, r: int):
        key = f"round{r}/ctr"
        if self.done(key):
            self.echo(f"[{key}] done: {self.state[key].get('test_auc')}")
            return
        from reasonrec.estimator import Recommender

        data, expl = self.ctr_inputs(r)
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        rec = Recommender(self._rec_config(expl is not None, seed=self.cfg.seed)).fit(data, expl)
        torch.set_num_threads(threads)  # the CTR trainer sets 1 thread for the process
        metrics = rec.evaluate(data, expl, "test")
        rec.save(self.out / f"round{r}" / "ctr")
        self.echo(f"[{key}] {self.cfg.backbone}{' + aligned explanations' if expl is not None else ''} "
                  f"on {len(data.samples):,} samples: test AUC {metrics['auc']:.4f}, LogLoss {metrics['logloss']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)")
        self.mark(key, test_auc=metrics["auc"], test_logloss=metrics["logloss"], samples=len(data.samples),
                  with_explanations=expl is not None, seconds=round(time.perf_counter() - t0, 1))

    def ctr_probs(self, r: int, samples: pd.DataFrame) -> dict[int, float]:
        data, expl = self.ctr_inputs(r)
        rec = self.ctr_model(r)
        threads = torch.get_num_threads()
        p = rec.predict(samples, expl, items=data.items, users=data.users)
        torch.set_num_threads(threads)
        return dict(zip(samples["sample_id"].astype(int), np.asarray(p, float)))

    # -- stages 2 and 3: RL -----------------------------------------------------------------

    def _load_policy(self):
        if self._policy is None:
            from reasonrec.align.policy import build_policy, load_base

            self._backend = load_base(threads=self.cfg.threads)
            self.state["base_model_id"] = self._backend.model_id
            self._save_state()
            self._policy = build_policy(self._backend.model, self.cfg.lora)
            self._fresh = True
        return self._backend, self._policy

    def _set_adapter(self, directory: Path | None):
        """Load adapter weights into the live policy; None keeps the fresh adapter (B = 0)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        _, policy = self._load_policy()
        if directory is None:
            if not self._fresh:
                raise ReasonrecError("a fresh adapter was asked for after training in this process")
            return
        set_peft_model_state_dict(policy, load_file(str(Path(directory) / "adapter_model.safetensors")))
        self._fresh = False

    def _pool(self) -> list[RLPrompt]:
        ids = rl_sample_ids(self.sub.samples, self.cfg.rl_samples, self.cfg.seed)
        return rl_prompts(self.explainer(_Keyed("prompt-only")), self.sub.samples, self.data.items, ids)

    def _probe_pool(self, pool: list[RLPrompt]) -> list[RLPrompt]:
        """Train prompts outside the RL pool: a fixed set the policy is probed on (greedy)."""
        taken = {p.sample_id for p in pool}
        rest = self.sub.samples[~self.sub.samples["sample_id"].isin(taken)]
        ids = rl_sample_ids(rest, self.cfg.probe_samples, self.cfg.seed + 1)
        return rl_prompts(self.explainer(_Keyed("prompt-only")), self.sub.samples, self.data.items, ids)

    def _probe(self, trainer, reward, prompts: list[RLPrompt], r: int, stage: str) -> dict:
        """Greedy explanations of the probe prompts by the current policy, scored like the rewards."""
        from reasonrec.align.evaluate import auc
        from reasonrec.align.rewards import compliant, format_check

        outs = trainer.rollout(prompts, seed=0, temperature=0.0, group_size=1)
        cleaned = [format_check(p.prompt.prefix, trainer.stop.text(o[0].ids), o[0].finish_reason)
                   for p, o in zip(prompts, outs)]
        parts = reward(prompts, cleaned)
        y = np.array([reward.labels[p.sample_id] for p in prompts])
        q = np.array([reward.ctr_q[p.sample_id] for p in prompts])
        row = {"round": r, "stage": stage, "step": trainer.step_no, "probe_lc": float(np.mean(parts["lc"])),
               "probe_ic": float(np.mean(parts["ic"])), "probe_fmt_ok": float(np.mean([compliant(c) for c in cleaned])),
               "probe_judge_auc": auc(y, parts["z"]),
               "probe_ic_pearson": float(np.corrcoef(parts["p_yes"], q)[0, 1]) if np.std(parts["p_yes"]) > 0 else None,
               "probe_words": float(np.mean([len(c.text.split()) for c in cleaned])), "time": time.time()}
        with open(self.out / "probe.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def calibration(self, judge, backend, pool: list[RLPrompt], labels) -> dict:
        """Per-task judge intercept: mean P(Yes) over the base model's greedy explanations of the
        calibration prompts = the train label rate. Computed once, kept in state.json."""
        if "calibration" in self.state:
            return self.state["calibration"]["bias"]
        from reasonrec.align.rewards import calibration_bias, format_check

        calib_ids = set(sorted({p.sample_id for p in pool})[: self.cfg.calib_samples])
        prompts = [p for p in pool if p.sample_id in calib_ids]
        _, policy = self._load_policy()
        from reasonrec.align.trainer import GRPO

        g = GRPO(policy, backend, None, self.cfg.grpo)
        with policy.disable_adapter():
            outs = g.rollout(prompts, seed=0, temperature=0.0, group_size=1)
        texts = [format_check(p.prompt.prefix, g.stop.text(o[0].ids), o[0].finish_reason).text for p, o in zip(prompts, outs)]
        z = judge.logits(texts, [p.candidate for p in prompts])
        rate = labels.rate()
        bias = {task: calibration_bias(z[[p.task == task for p in prompts]], rate) for task in {p.task for p in prompts}}
        self.state["calibration"] = {"bias": bias, "target_rate": rate, "prompts": len(prompts),
                                     "raw_mean_p": {t: float(np.mean(1 / (1 + np.exp(-z[[p.task == t for p in prompts]]))))
                                                    for t in bias}}
        self._save_state()
        self.echo(f"judge calibration: intercepts {bias} (train label rate {rate:.3f})")
        return bias

    def stage_rl(self, r: int, stage: str):
        from tqdm.auto import tqdm

        from reasonrec.align.judge import YesNoJudge
        from reasonrec.align.policy import adapter_sha256, save_adapter
        from reasonrec.align.rewards import AlignmentReward, TrainLabels
        from reasonrec.align.trainer import GRPO

        key = f"round{r}/{stage}"
        if self.done(key):
            self.echo(f"[{key}] done: adapter {self.state[key]['sha256'][:16]}")
            return
        if not self.done(f"round{r}/ctr"):
            raise ReasonrecError(f"[{key}] needs stage ctr of round {r} first")
        steps = self.cfg.steps_lc if stage == "lc" else self.cfg.steps_ic
        weights = self.cfg.weights_lc if stage == "lc" else self.cfg.weights_ic
        stage_dir = self.out / f"round{r}" / stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        backend, policy = self._load_policy()

        init = None
        if stage == "ic":
            init = self.out / f"round{r}" / "lc" / "final"
        elif r > 1:
            init = self.out / f"round{r - 1}" / "ic" / "final"
        latest = stage_dir / "latest"
        resume = (latest / "trainer.pt").is_file()
        self._set_adapter(latest if resume else init)

        pool = self._pool()
        labels = TrainLabels(self.sub.samples)
        probes = self._probe_pool(pool)
        q = self.ctr_probs(r, self.sub.samples[self.sub.samples["sample_id"].isin({p.sample_id for p in pool + probes})])
        judge = YesNoJudge(policy.get_base_model(), backend.tokenizer, noun=self.templates.item_noun,
                           context=policy.disable_adapter)
        bias = self.calibration(judge, backend, pool, labels)
        reward = AlignmentReward(judge, weights, labels, q, bias)
        trainer = GRPO(policy, backend, reward, replace(self.cfg.grpo, seed=self.cfg.grpo.seed + 1000 * r))
        self._fresh = False
        log = self.out / "rewards.jsonl"
        if resume:
            trainer.load_state_dict(torch.load(latest / "trainer.pt", weights_only=False))
            self._truncate_log(log, r, stage, trainer.step_no)
            self.echo(f"[{key}] resuming at step {trainer.step_no}/{steps}")
        self.echo(f"[{key}] GRPO: {steps} steps x {self.cfg.grpo.prompts_per_step} prompts x {self.cfg.grpo.group_size} "
                  f"completions, pool {len(pool)} prompts, weights {weights.as_dict()}")
        probe_log = self.out / "probe.jsonl"
        if resume:
            self._truncate_log(probe_log, r, stage, trainer.step_no)
        if trainer.step_no == 0:
            self.echo(f"[{key}] probe at step 0: {self._probe(trainer, reward, probes, r, stage)}")
        bar = tqdm(total=steps, initial=trainer.step_no, desc=key, unit="step", disable=not self.progress)
        t_stage = time.perf_counter()
        while trainer.step_no < steps:
            prompts = batch_for_step(pool, trainer.step_no, self.cfg.grpo.prompts_per_step, self.cfg.seed + r)
            stats = trainer.step(prompts)
            row = {"round": r, "stage": stage, **stats, "time": time.time()}
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            with open(stage_dir / "samples.jsonl", "a") as f:
                for sid, task, text, rew in trainer.last_samples[:: self.cfg.grpo.group_size]:
                    f.write(json.dumps({"step": trainer.step_no, "sample_id": sid, "task": task, "text": text,
                                        "reward": rew}) + "\n")
            bar.update(1)
            bar.set_postfix(R=f"{stats['reward_total']:.3f}", lc=f"{stats.get('reward_lc', float('nan')):.3f}",
                            ic=f"{stats.get('reward_ic', float('nan')):.3f}", kl=f"{stats['kl']:.4f}",
                            s=f"{stats['step_s']:.0f}")
            if trainer.step_no % self.cfg.probe_every == 0 or trainer.step_no == steps:
                bar.write(f"[{key}] probe at step {trainer.step_no}: {self._probe(trainer, reward, probes, r, stage)}")
            if trainer.step_no % self.cfg.checkpoint_every == 0 or trainer.step_no == steps:
                self._checkpoint(policy, trainer, latest)
        bar.close()
        final = stage_dir / "final"
        sha = save_adapter(policy, final)
        assert sha == adapter_sha256(final)
        self.mark(key, sha256=sha, adapter=str(final), steps=steps, seconds_this_run=round(time.perf_counter() - t_stage, 1),
                  weights=weights.as_dict(), labels_read=len(labels.read))
        self.echo(f"[{key}] adapter {final} sha256 {sha[:16]}")

    def _checkpoint(self, policy, trainer, latest: Path):
        from reasonrec.align.policy import save_adapter

        tmp = latest.with_name("latest.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(policy, tmp)
        torch.save(trainer.state_dict(), tmp / "trainer.pt")
        old = latest.with_name("latest.old")
        shutil.rmtree(old, ignore_errors=True)
        if latest.exists():
            latest.rename(old)
        tmp.rename(latest)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _truncate_log(log: Path, r: int, stage: str, step: int):
        if not log.is_file():
            return
        keep = [line for line in log.read_text().splitlines()
                if line.strip() and not ((row := json.loads(line))["round"] == r and row["stage"] == stage
                                         and row["step"] > step)]
        log.write_text("".join(k + "\n" for k in keep))

    def _free_policy(self):
        self._policy = self._backend = None
        gc.collect()

    # -- generation -------------------------------------------------------------------------

    def aligned_model_id(self, r: int) -> str:
        from reasonrec.align.policy import aligned_model_id

        return aligned_model_id(self.state["base_model_id"], self.state[f"round{r}/ic"]["sha256"])

    def _base_model_id(self) -> str:
        if "base_model_id" not in self.state:
            from reasonrec.llm.embedded import EmbeddedBackend

            self.state["base_model_id"] = EmbeddedBackend(threads=self.cfg.threads).model_id
            self._save_state()
        return self.state["base_model_id"]

    def stage_generate(self, r: int):
        key = f"round{r}/generate"
        if self.done(key):
            self.echo(f"[{key}] done")
            return
        if not self.done(f"round{r}/ic"):
            raise ReasonrecError(f"[{key}] needs stage ic of round {r} first")
        from reasonrec.align.policy import aligned_backend
        from reasonrec.llm.embedded import EmbeddedBackend

        self._free_policy()
        summaries = {}
        samples, items = self.sub.samples, self.data.items
        if r == 1:  # the zero-shot (post-hoc) baseline for the same samples; the store skips what exists
            base = EmbeddedBackend(threads=self.cfg.threads)
            self.state["base_model_id"] = base.model_id
            self.echo(f"[{key}] zero-shot explanations for {len(samples):,} samples ({base.model_id})")
            summaries["zero_shot"] = [s.as_dict() for s in self.explainer(base).run(samples, items, self.progress)]
            del base
            gc.collect()
        adapter = self.out / f"round{r}" / "ic" / "final"
        backend = aligned_backend(adapter, threads=self.cfg.threads)
        self._base_model_id()
        if backend.model_id != self.aligned_model_id(r):
            raise ReasonrecError(f"adapter {adapter} changed since training ({backend.model_id})")
        self.echo(f"[{key}] aligned explanations for {len(samples):,} samples ({backend.model_id})")
        summaries["aligned"] = [s.as_dict() for s in self.explainer(backend).run(samples, items, self.progress)]
        del backend
        gc.collect()
        self.mark(key, model_id=self.aligned_model_id(r), summaries=summaries)

    def zero_shot_table(self, status: bool = False) -> pd.DataFrame:
        ex = self.explainer(_Keyed(self._base_model_id()))
        return (lookup_with_status if status else lambda e, s, i: e.lookup(s, i))(ex, self.sub.samples, self.data.items)

    def aligned_table(self, r: int, status: bool = False) -> pd.DataFrame:
        ex = self.explainer(_Keyed(self.aligned_model_id(r)))
        table = (lookup_with_status if status else lambda e, s, i: e.lookup(s, i))(ex, self.sub.samples, self.data.items)
        tasks = self.templates.variant_tasks(self.cfg.variant)
        missing = table[tasks].isna().any(axis=1).mean()
        if missing > 0.02:
            raise ReasonrecError(f"{missing:.1%} of the sub-slice has no aligned explanations of round {r}; "
                                 "run the generate stage")
        return table

    # -- evaluation -------------------------------------------------------------------------

    def stage_evaluate(self):
        from reasonrec.align.evaluate import classifier_auc, quality_table
        from reasonrec.align.judge import YesNoJudge
        from reasonrec.llm.embedded import EmbeddedBackend

        R = self.cfg.rounds
        self._free_policy()
        test = self.sub.samples[self.sub.samples["split"] == "test"].sort_values("sample_id")
        tables = {"zero_shot": self.zero_shot_table(True), "aligned": self.aligned_table(R, True)}
        frames, statuses = {}, {}
        for name, table in tables.items():
            t = test[["sample_id"]].merge(table, on="sample_id", how="left")
            frames[name] = t
            statuses[name] = t["positive_status"].fillna("missing").tolist() + t["negative_status"].fillna("missing").tolist()
        base = EmbeddedBackend(threads=self.cfg.threads)
        judge = YesNoJudge(base.model, base.tokenizer, noun=self.templates.item_noun)
        q_map = self.ctr_probs(R, test)
        q = np.array([q_map[int(s)] for s in test["sample_id"]])
        by_item = {r["item_id"]: r for r in self.data.items.to_dict("records")}
        candidates = [self.templates.describe_item(by_item[i]) for i in test["item_id"]]
        prefixes = tuple(self.templates.tasks[t].prefix for t in self.templates.variant_tasks(self.cfg.variant))
        t0 = time.perf_counter()
        table = quality_table(frames, judge, self.state["calibration"]["bias"], test["label"].to_numpy(), q,
                              candidates, prefixes, statuses)
        zs = table.attrs["z"]
        train = self.sub.samples[self.sub.samples["split"] == "train"].sort_values("sample_id")
        for name, full in tables.items():
            tr = train[["sample_id", "item_id", "label"]].merge(full, on="sample_id", how="left")
            te = test[["sample_id", "label"]].merge(full, on="sample_id", how="left")
            table.loc[name, "lc_auc_classifier"] = classifier_auc(
                tr, te, [self.templates.describe_item(by_item[i]) for i in tr["item_id"]], candidates)
        detail = test[["sample_id", "user_id", "item_id", "label"]].copy()
        detail["ctr_q"] = q
        for name, (zp, zn) in zs.items():
            detail[f"{name}_positive"] = frames[name]["positive"].to_numpy()
            detail[f"{name}_negative"] = frames[name]["negative"].to_numpy()
            detail[f"{name}_z_positive"], detail[f"{name}_z_negative"] = zp, zn
        detail.to_parquet(self.out / "quality_detail.parquet", index=False)
        result = {"test_samples": len(test), "users": self.sub.card["users"],
                  "ctr_model": f"round{R}/ctr", "judge": "frozen base LLM, few-shot Yes/No (calibrated)",
                  "metrics": json.loads(table.to_json(orient="index")),
                  "seconds": round(time.perf_counter() - t0, 1)}
        (self.out / "quality.json").write_text(json.dumps(result, indent=2))
        self.echo(table.T.to_string(float_format=lambda v: f"{v:.4f}"))
        self.mark("evaluate", **{k: v for k, v in result.items() if k != "metrics"})

    def stage_aug(self):
        from reasonrec.pipeline import paired_test, run_seeds

        R = self.cfg.rounds
        rows = {"backbone": (False, None), "+zero-shot": (True, self.zero_shot_table()),
                "+aligned": (True, self.aligned_table(R))}
        frames = []
        threads = torch.get_num_threads()
        for name, (with_text, table) in rows.items():
            t0 = time.perf_counter()
            frame = run_seeds(self.sub, self._rec_config(with_text), self.cfg.seeds, table)
            frame.insert(0, "row", name)
            frames.append(frame)
            self.echo(f"[aug] {name}: AUC {frame['test_auc'].mean():.4f} ± {frame['test_auc'].std(ddof=1):.4f}, "
                      f"LogLoss {frame['test_logloss'].mean():.4f} ± {frame['test_logloss'].std(ddof=1):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)")
        torch.set_num_threads(threads)
        allrows = pd.concat(frames, ignore_index=True)
        allrows.to_csv(self.out / "aug.csv", index=False)
        summary = {name: {m: [float(g[m].mean()), float(g[m].std(ddof=1))] for m in ("test_auc", "test_logloss")}
                   for name, g in allrows.groupby("row", sort=False)}
        get = lambda n, m: allrows[allrows["row"] == n].sort_values("seed")[m].to_numpy()  # noqa: E731
        tests = {f"{a} vs {b}": {m: paired_test(get(a, m), get(b, m)) for m in ("test_auc", "test_logloss")}
                 for a, b in (("+aligned", "+zero-shot"), ("+aligned", "backbone"), ("+zero-shot", "backbone"))}
        result = {"backbone": self.cfg.backbone, "encoder": self.cfg.encoder, "seeds": list(self.cfg.seeds),
                  "samples": len(self.sub.samples), "users": self.sub.card["users"],
                  "summary": summary, "paired_tests": tests}
        (self.out / "aug.json").write_text(json.dumps(result, indent=2))
        self.mark("aug", summary=summary)

    # -- report -----------------------------------------------------------------------------

    def stage_report(self):
        from reasonrec.align.report import write_report

        if not self.cfg.bench_dir:
            return
        paths = write_report(self, Path(self.cfg.bench_dir))
        self.echo("report: " + ", ".join(str(p) for p in paths))
        self.mark("report", files=[str(p) for p in paths])


def run_align(config: AlignConfig | None = None, stages=("all",), echo=print, progress: bool = True) -> dict:
    """Run (or resume) the ExpCTR loop; returns the state (which stages are done, their numbers)."""
    return AlignRun(config or AlignConfig(), echo, progress).run(stages)
