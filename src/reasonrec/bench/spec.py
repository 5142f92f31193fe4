"""Benchmark specs: one YAML file names a dataset, an LLM, seeds, train options and experiments.

    name: paper                  # results go to benchmarks/results/<name>/, the report to benchmarks/<name>/
    version: 1                   # part of every run's hash: bump it to rerun everything
    dataset:
      dir: artifacts/data/ml-100k-bench
      prepare: {dataset: ml-100k, last_n_per_user: 20}   # how to make `dir` when it is missing
    store: artifacts/store/explanations.sqlite
    cache: [benchmarks/cache/*.parquet]                  # imported into the store when texts are missing
    llm: embedded                # default generator: embedded | gemma3 | gguf:/path | openai:M@URL | vllm:M
    llm_names: {embedded: SmolLM2-135M-Instruct, gemma3: Gemma-3-270M (base)}
    model_ids: {gemma3: "gemma-3-270m...:sha256=...:float32"}  # optional: store ids, so no backend is built
    seeds: [0, 1, 2, 3, 4]
    tasks: [classification, regression]
    subslice: {users: 150, seed: 0}                      # what `users: subslice` means
    max_missing: 0.01            # tolerated share of samples without explanations
    train: {epochs: 100, patience: 5}                    # TrainConfig defaults for every experiment
    tune: {lr: [0.001, 0.01], embed_dim: [8, 16]}        # optional: grid for every trained experiment
    experiments:
      - {id: lr-recsys, tag: ours, model: lr-recsys}
      - {id: din, tag: baseline, model: din}
      - {id: lr-recsys-aspects, tag: aspects, variant: aspects, users: subslice}
      - {id: llm-direct, tag: llm_direct, kind: llm_direct, users: subslice}

Experiment keys (defaults in brackets): id, label [id], tag [other] (which table/claim the row
belongs to, see TAGS), kind [train | llm_direct], model [lr-recsys], tasks [spec.tasks],
explanations [text for lr-recsys, none otherwise; text | free | none], encoder [autoencoder],
variant [contrastive], profiles [true], llm [spec.llm], train_fraction [1.0] with fraction_seed
[0; an int, or "run" to resample per seed], users [null = all; an int N or "subslice": the first N
users of a seeded hash ranking, so every experiment naming the same N gets the same users],
preset [null; a named preset of the model], side_features, train {TrainConfig overrides}, embed_dim,
mlp, dropout, extra, encoder_options [all: reasonrec.config's defaults for the model, so every row
gets the same inputs unless it says otherwise], seeds [spec.seeds], compare_to [the `ours`
experiment of the same user slice], tune [spec.tune for trained experiments; null turns it off],
control [null; `shuffled` or `oracle` with q: diagnostic text rows, see bench/controls.py].
`claims:` lists the claims the report tests, as data (bench/claims.py has the schema).
The resolved config (library defaults included) enters each run's hash, so a change of defaults
reruns what it affects.

Tuning (`tune: {option: [values, ...]}`; options: TUNABLE): per experiment and task, the first
`tune_seeds` [3] seeds run at every point of the grid (the product of the lists, the last key
varying fastest), the point with the best *mean validation* metric over those seeds wins
(classification: highest AUC; regression: lowest RMSE; ties: the first point in grid order) and
every other seed then runs at that point. Every experiment gets the same grid, so the same budget. Test metrics never enter
the choice. Grid runs are ordinary cached runs: a point's values enter the run hash through the
options they set, so growing a grid reruns only the new points.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from reasonrec.bench.checks import (CONTROLS, TASKS, TUNABLE, _check_control, _check_tasks, _check_train,  # noqa: F401
                                    _check_tune, _fail)
from reasonrec.errors import ReasonrecError
from reasonrec.explain import MAX_MISSING

KINDS = ("train", "llm_direct")
# tag -> where the row goes in the report (and which claim reads it)
TAGS = {
    "ours": "LR-Recsys (Table 2 at 100% on all users; Table 3 below 100%; reference row elsewhere)",
    "baseline": "Table 2 baseline",
    "generator": "Table 4: LR-Recsys with another generator LLM",
    "no_profiles": "Table 4: w/o profile augmentation",
    "summary": "Table 4: consumption-history summary instead of reasons",
    "llm_direct": "Table 4: the LLM predicts the rating directly",
    "aspects": "Table 5: aspect terms only",
    "positive_only": "Table 5: positive explanations only",
    "general": "Table 5: general explanations",
    "free_vectors": "Table 6: Ablation 1, free vectors",
    "no_autoencoder": "Table 6: Ablation 2, sentence-encoder / LLM embeddings",
    "alt_prompt": "Table 6: Ablation 3, alternative prompt",
    "ncf_backbone": "Table 6: Robustness 1, NCF with explanations",
    "with_explanations": "a zoo model reading explanations (the with vs without explanations table)",
    "no_explanations": "LR-Recsys without explanations (the with vs without explanations table)",
    "fusion": "LR-Recsys with another explanation fusion (gated tokens; the with vs without explanations table)",
    "faithful": "LR-Recsys' faithful preset, the paper's exact setting (raw fusion; Figures 7 and 10)",
    "control": "a diagnostic control row (shuffled or oracle texts): the informativeness figure only",
    "other": "listed in the appendix table only",
}
# display-only keys: changing them never reruns anything
DISPLAY_KEYS = ("label", "tag", "compare_to")
# experiment keys that are config overrides (reasonrec.config), passed on only when set
CONFIG_KEYS = ("preset", "side_features", "embed_dim", "mlp", "dropout", "fusion", "expl_dropout", "extra",
               "encoder_options")


@dataclass
class Experiment:
    id: str
    label: str = ""
    tag: str = "other"
    kind: str = "train"
    model: str = "lr-recsys"
    tasks: list = field(default_factory=list)
    explanations: str = ""
    encoder: str = "autoencoder"
    variant: str = "contrastive"
    profiles: bool = True
    llm: str = ""
    train_fraction: float = 1.0
    fraction_seed: object = 0
    users: object = None
    preset: object = None
    side_features: object = None
    train: dict = field(default_factory=dict)
    embed_dim: object = None
    mlp: object = None
    dropout: object = None
    fusion: object = None
    expl_dropout: object = None
    extra: object = None
    encoder_options: object = None
    seeds: list = field(default_factory=list)
    compare_to: str = ""
    tune: object = None             # {option: [values]} or None (not tuned)
    control: object = None          # None | "shuffled" | "oracle" (see bench/controls.py)
    q: object = None                # oracle: the share of samples whose texts state the true label
    subslice_seed: int = 0          # from the spec's `subslice.seed`; not set per experiment

    @property
    def uses_text(self) -> bool:
        return self.kind == "llm_direct" or self.explanations == "text"

    @property
    def slice_name(self) -> str:
        return "all" if self.users is None else f"u{self.users}"

    def grid(self) -> list[dict]:
        """The tune grid's points in order (the last key varies fastest); [] when not tuned."""
        if not self.tune:
            return []
        return [dict(zip(self.tune, values)) for values in itertools.product(*self.tune.values())]

    def at(self, point: dict | None) -> "Experiment":
        """This experiment with a grid point's values set: what a run at that point trains and hashes."""
        if not point:
            return self
        exp = copy.deepcopy(self)
        for key, value in point.items():
            if key in ("embed_dim", "dropout"):
                setattr(exp, key, value)
            else:
                exp.train[key] = value
        return exp

    def config(self, task: str, seed: int = 0):
        """The RecommenderConfig a run of this experiment trains with (reasonrec.config layering)."""
        from reasonrec.config import resolve

        given = {k: getattr(self, k) for k in CONFIG_KEYS if getattr(self, k) is not None}
        return resolve({**given, "model": self.model, "task": task, "explanations": self.explanations,
                        "encoder": self.encoder, "train": {**self.train, "seed": seed}})

    def resolved(self) -> dict:
        """Everything that determines the runs' numbers (display keys left out): the hash input,
        with the library's defaults resolved in. The grid itself is left out too: a run enters the
        hash through the point it sets (`at`)."""
        out = {k: v for k, v in asdict(self).items()
               if k not in DISPLAY_KEYS + ("id", "seeds", "tasks", "tune")}
        if self.kind == "train":
            out["config"] = self.config("classification").model_dump(
                mode="json", exclude={"task": True, "text_columns": True, "strip_prefixes": True,
                         "train": {"seed": True, "progress": True, "threads": True}})
        if self.users is None:
            out["subslice_seed"] = None
        if self.kind == "llm_direct":   # nothing is trained: only the text source matters
            return {k: out[k] for k in ("kind", "variant", "profiles", "llm", "users", "subslice_seed")}
        if not self.uses_text:
            for k in ("encoder", "variant", "profiles", "llm", "encoder_options"):
                out.pop(k, None)
        if self.train_fraction >= 1.0:
            out.pop("fraction_seed", None)
        for key in ("control", "q"):      # absent unless set, so rows without controls keep their hashes
            if out.get(key) is None:
                out.pop(key, None)
        if self.control == "oracle":      # no generator is read: its settings must not rerun anything
            for key in ("llm", "variant", "profiles"):
                out.pop(key, None)
        return out


@dataclass
class Spec:
    name: str
    path: Path | None
    version: int = 1
    description: str = ""
    dataset_dir: Path = Path("artifacts/data/ml-100k-bench")
    prepare: dict = field(default_factory=dict)
    store: Path = Path("artifacts/store/explanations.sqlite")
    cache: list = field(default_factory=list)
    llm: str = "embedded"
    llm_names: dict = field(default_factory=dict)
    model_ids: dict = field(default_factory=dict)      # llm -> pinned store model id (no backend needed)
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    tasks: list = field(default_factory=lambda: list(TASKS))
    subslice_users: int = 150
    subslice_seed: int = 0
    max_missing: float = MAX_MISSING
    train: dict = field(default_factory=dict)
    tune: dict | None = None                            # default grid of the trained experiments
    tune_seeds: int = 3                                 # a point is chosen on its mean over this many seeds
    results_root: Path = Path("benchmarks/results")
    report_root: Path = Path("benchmarks")
    experiments: list = field(default_factory=list)
    claims: list = field(default_factory=list)          # expanded claim entries (bench/claims.py)

    def experiment(self, exp_id: str) -> Experiment:
        for e in self.experiments:
            if e.id == exp_id:
                return e
        raise ReasonrecError(f"spec '{self.name}' has no experiment '{exp_id}'; "
                             f"have {[e.id for e in self.experiments]}")

    @property
    def results_dir(self) -> Path:
        return self.results_root / self.name

    @property
    def report_dir(self) -> Path:
        return self.report_root / self.name

    def llm_name(self, llm: str) -> str:
        return self.llm_names.get(llm, llm)

    def summary(self) -> dict:
        """What the report needs to know about the spec (written beside the results)."""
        return {"name": self.name, "version": self.version, "description": self.description,
                "dataset_dir": str(self.dataset_dir), "llm": self.llm, "llm_names": self.llm_names,
                "seeds": list(self.seeds), "tasks": list(self.tasks), "subslice_users": self.subslice_users,
                "subslice_seed": self.subslice_seed, "max_missing": self.max_missing, "train": self.train,
                "tune": self.tune, "tune_seeds": self.tune_seeds,
                "experiments": [{"id": e.id, "label": e.label, "tag": e.tag, "kind": e.kind, "model": e.model,
                                 "tasks": e.tasks, "explanations": e.explanations, "encoder": e.encoder,
                                 "variant": e.variant, "profiles": e.profiles, "llm": e.llm,
                                 "train_fraction": e.train_fraction, "users": e.users, "slice": e.slice_name,
                                 "compare_to": e.compare_to, "seeds": e.seeds, "tune": e.tune,
                                 "control": e.control, "q": e.q}
                                for e in self.experiments],
                "claims": self.claims}


_TOP_KEYS = {"name", "version", "description", "dataset", "store", "cache", "llm", "llm_names", "model_ids",
             "seeds", "tasks",
             "subslice", "max_missing", "train", "tune", "tune_seeds", "results", "report", "experiments", "defaults",
             "claims"}
_EXP_KEYS = {f.name for f in fields(Experiment)} - {"subslice_seed"}


def load_spec(path: str | Path, overrides: dict | None = None) -> Spec:
    """Read and validate a spec file. `overrides` replaces top-level keys (tests point `dataset`,
    `store` and `results` at temporary places this way)."""
    path = Path(path)
    if not path.is_file():
        raise ReasonrecError(f"no spec file at {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReasonrecError(f"{path}: not valid YAML ({err})") from None
    raw.update(copy.deepcopy(overrides or {}))
    return parse_spec(raw, path)


def parse_spec(raw: dict, path: Path | None = None) -> Spec:
    where = str(path or "<spec>")
    if not isinstance(raw, dict):
        _fail(where, "a spec is a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        _fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    name = str(raw.get("name") or (path.stem if path else "spec"))
    ds = raw.get("dataset") or {}
    if isinstance(ds, str):
        ds = {"dir": ds}
    if "dir" not in ds:
        _fail(where, "dataset.dir is required (a prepared dataset directory)")
    sub = raw.get("subslice") or {}
    spec = Spec(name=name, path=path, version=int(raw.get("version", 1)), description=str(raw.get("description", "")),
                dataset_dir=Path(ds["dir"]), prepare=dict(ds.get("prepare") or {}),
                store=Path(raw.get("store", "artifacts/store/explanations.sqlite")),
                cache=list(raw.get("cache") or []), llm=str(raw.get("llm", "embedded")),
                llm_names=dict(raw.get("llm_names") or {}), model_ids=dict(raw.get("model_ids") or {}),
                seeds=[int(s) for s in raw.get("seeds", [0, 1, 2, 3, 4])],
                tasks=list(raw.get("tasks", list(TASKS))),
                subslice_users=int(sub.get("users", 150)), subslice_seed=int(sub.get("seed", 0)),
                max_missing=float(raw.get("max_missing", MAX_MISSING)), train=dict(raw.get("train") or {}),
                tune_seeds=int(raw.get("tune_seeds", Spec.tune_seeds)),
                results_root=Path(raw.get("results", "benchmarks/results")),
                report_root=Path(raw.get("report", "benchmarks")))
    _check_tasks(spec.tasks, where)
    _check_train(spec.train, where)
    spec.tune = _check_tune(raw.get("tune"), where)
    if not spec.seeds:
        _fail(where, "seeds: at least one seed")
    defaults = dict(raw.get("defaults") or {})
    seen = set()
    for i, entry in enumerate(raw.get("experiments") or []):
        if not isinstance(entry, dict) or "id" not in entry:
            _fail(where, f"experiments[{i}] needs an id")
        merged = {**copy.deepcopy(defaults), **entry}
        if "tune" not in merged and merged.get("kind", "train") == "train":   # `tune: null` opts out
            merged["tune"] = copy.deepcopy(spec.tune)
        exp = _experiment(merged, spec, f"{where}: experiment '{entry['id']}'")
        if exp.id in seen:
            _fail(where, f"experiment id '{exp.id}' appears twice")
        seen.add(exp.id)
        spec.experiments.append(exp)
    if not spec.experiments:
        _fail(where, "no experiments")
    for exp in spec.experiments:
        if exp.compare_to and exp.compare_to not in seen:
            _fail(where, f"experiment '{exp.id}': compare_to '{exp.compare_to}' is not an experiment id")
    from reasonrec.bench.claims import parse_claims

    spec.claims = parse_claims(raw.get("claims") or [], seen, where)
    return spec


def _experiment(raw: dict, spec: Spec, where: str) -> Experiment:
    from reasonrec.models.base import MODELS

    unknown = set(raw) - _EXP_KEYS
    if unknown:
        _fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_EXP_KEYS)}")
    exp = Experiment(id=str(raw["id"]))
    for key, value in raw.items():
        setattr(exp, key, copy.deepcopy(value))
    exp.id = str(exp.id)
    if not exp.id or any(c in exp.id for c in "/\\ "):
        _fail(where, "ids are non-empty and have no slashes or spaces (they name directories)")
    exp.label = str(exp.label or exp.id)
    if exp.tag not in TAGS:
        _fail(where, f"tag '{exp.tag}': choose one of {sorted(TAGS)}")
    if exp.kind not in KINDS:
        _fail(where, f"kind '{exp.kind}': choose one of {list(KINDS)}")
    if exp.kind == "train" and exp.model not in MODELS:
        _fail(where, f"model '{exp.model}': choose one of {sorted(MODELS)}")
    if isinstance(exp.tasks, str):
        exp.tasks = [exp.tasks]
    exp.tasks = list(exp.tasks or spec.tasks)
    _check_tasks(exp.tasks, where)
    exp.explanations = exp.explanations or ("text" if exp.model == "lr-recsys" else "none")
    if exp.explanations not in ("text", "free", "none"):
        _fail(where, f"explanations '{exp.explanations}': text | free | none")
    if exp.encoder not in ("autoencoder", "sentence", "llm"):
        _fail(where, f"encoder '{exp.encoder}': autoencoder | sentence | llm")
    if exp.kind == "llm_direct":
        exp.variant = exp.variant if exp.variant != "contrastive" else "direct"
        exp.model = "llm-direct"
    exp.llm = str(exp.llm or spec.llm)
    exp.profiles = bool(exp.profiles)
    try:
        exp.train_fraction = float(exp.train_fraction)
    except (TypeError, ValueError):
        _fail(where, f"train_fraction {exp.train_fraction!r} is not a number")
    if not 0 < exp.train_fraction <= 1:
        _fail(where, f"train_fraction {exp.train_fraction} must be in (0, 1]")
    if exp.fraction_seed != "run":
        try:
            exp.fraction_seed = int(exp.fraction_seed)
        except (TypeError, ValueError):
            _fail(where, f"fraction_seed {exp.fraction_seed!r}: an integer or \"run\"")
    if exp.users == "subslice":
        exp.users = spec.subslice_users
    if exp.users is not None:
        try:
            exp.users = int(exp.users)
        except (TypeError, ValueError):
            _fail(where, f"users {exp.users!r}: null (all), an integer, or \"subslice\"")
        if exp.users < 2:
            _fail(where, "users: at least 2")
    exp.subslice_seed = spec.subslice_seed
    if not isinstance(exp.train, dict):
        _fail(where, "train: a mapping of TrainConfig options")
    _check_train(exp.train, where)
    exp.train = {**spec.train, **exp.train}
    exp.seeds = [int(s) for s in (exp.seeds or [])]
    _check_control(exp, where)
    exp.tune = _check_tune(exp.tune, where)
    if exp.tune and exp.kind != "train":
        _fail(where, "tune: only trained experiments have hyper-parameters to tune")
    if exp.kind == "train":
        try:
            exp.config(exp.tasks[0])
        except ReasonrecError as err:
            _fail(where, str(err))
    return exp


def run_hash(resolved: dict, task: str, seed: int, spec_version: int, dataset_fp: str,
             explanations_fp: str | None) -> str:
    payload = json.dumps({"experiment": resolved, "task": task, "seed": seed, "spec_version": spec_version,
                          "dataset": dataset_fp, "explanations": explanations_fp}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def card_fingerprint(card: dict) -> str:
    """The dataset card minus what differs between machines or runs of `data prepare`."""
    stable = {k: v for k, v in card.items() if k not in ("prepare_seconds", "source")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]
