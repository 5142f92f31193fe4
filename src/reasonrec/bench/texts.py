"""Where a bench run's explanation texts come from: the prepared dataset and its user slices, the
store (filled from the spec's committed cache exports when texts are missing), and what the texts
look like (texts.csv).

Nothing here calls an LLM to generate text; the LLM is known only by its model id, which keys the
store and is derived without loading the model (`reasonrec.llm.model_id_of`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reasonrec.bench.spec import Experiment, card_fingerprint
from reasonrec.data.prepare import Prepared, load_prepared, restrict_users
from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import ModelIdOnly


class MissingExplanations(ReasonrecError):
    """An experiment's texts are not in the store; the message says which command writes them."""

    def __init__(self, message: str, short: str | None = None):
        super().__init__(message)
        self.short = short or message.splitlines()[0]


@dataclass
class Explanations:
    table: pd.DataFrame
    info: dict          # text_columns, strip_prefixes, coverage, model_id, fingerprint


class TextSource:
    """The runner's inputs: dataset, slices and explanation texts (mixed into BenchRunner)."""

    @property
    def out(self) -> Path:
        return self.spec.results_dir

    def dataset(self) -> Prepared:
        if self._data is None:
            d = self.spec.dataset_dir
            if not (d / "samples.parquet").is_file():
                if not self.spec.prepare:
                    raise ReasonrecError(f"no prepared dataset at {d} and the spec says nothing under "
                                         "dataset.prepare; run `reasonrec data prepare --out {d}` first")
                from reasonrec.data.prepare import PrepareConfig, prepare
                from reasonrec.data.readers import read

                opts = dict(self.spec.prepare)
                name, path = opts.pop("dataset", "ml-100k"), opts.pop("path", None)
                reader = opts.pop("reader", {}) or {}
                self.echo(f"preparing {name} into {d} ({opts})")
                prepare(read(name, path, **reader), PrepareConfig(**opts)).save(d)
            self._data = load_prepared(d)
            self.dataset_fp = card_fingerprint(self._data.card)
        return self._data

    def slice(self, users: int | None) -> Prepared:
        if users not in self._slices:
            self._slices[users] = restrict_users(self.dataset(), users, self.spec.subslice_seed)
        return self._slices[users]

    def slice_dir(self, users: int | None) -> Path:
        """A prepared dataset directory holding exactly the slice (made on demand) — what
        `reasonrec explain --dataset` needs to generate texts for a sub-slice only."""
        if users is None:
            return self.spec.dataset_dir
        base = self.spec.dataset_dir
        suffix = f"-u{users}" + (f"s{self.spec.subslice_seed}" if self.spec.subslice_seed else "")
        target = base.parent / f"{base.name}{suffix}"
        self.slice(users).save(target)  # rewritten each time: a stale copy would name other users
        return target

    def model_id(self, llm: str) -> str:
        """The id that keys the LLM's rows in the store: pinned in the spec (`model_ids`), else
        derived from the backend spec without loading the model (nothing is generated here)."""
        if llm not in self._model_ids and llm in self.spec.model_ids:
            self._model_ids[llm] = self.spec.model_ids[llm]
        if llm not in self._model_ids:
            if self._factory is not None:
                self._model_ids[llm] = self._factory(llm).model_id
            else:
                from reasonrec.llm import model_id_of

                self._model_ids[llm] = model_id_of(llm)
        return self._model_ids[llm]

    def explain_command(self, exp: Experiment) -> str:
        parts = ["reasonrec explain", f"--dataset {self.slice_dir(exp.users)}", f"--llm {exp.llm}",
                 f"--variant {exp.variant}"]
        if not exp.profiles:
            parts.append("--no-profiles")
        if str(self.spec.store) != "artifacts/store/explanations.sqlite":
            parts.append(f"--store {self.spec.store}")
        return " ".join(parts)

    def explanations(self, exp: Experiment) -> Explanations:
        """The texts an experiment reads, for its user slice; MissingExplanations when more than
        `max_missing` of its samples have none."""
        key = (exp.users, exp.llm, exp.variant, exp.profiles)
        if key in self._expl:
            found = self._expl[key]
            if isinstance(found, Exception):
                raise found
            return found
        try:
            found = self._lookup(exp)
            if found.info["coverage"] < 1.0 - self.spec.max_missing and self._import_cache():
                found = self._lookup(exp)
            if found.info["coverage"] < 1.0 - self.spec.max_missing:
                data = self.slice(exp.users)
                short = (f"{1 - found.info['coverage']:.1%} of the {len(data.samples):,} samples of slice "
                         f"'{exp.slice_name}' have no usable '{exp.variant}' explanations"
                         f"{'' if exp.profiles else ' (without profiles)'} from {found.info['model_id']} in "
                         f"{self.spec.store} (tolerated: {self.spec.max_missing:.1%})")
                raise MissingExplanations(
                    f"{short} (never generated, or generated and failed clean-up: `reasonrec cache stats` "
                    f"counts failures; a rerun keeps them unless given --retry-failed). Generate missing ones with:\n"
                    f"    {self.explain_command(exp)}\n"
                    f"or import a cache export with `reasonrec cache import FILE --store {self.spec.store}`", short)
        except Exception as err:  # no backend, no store, bad template: the run is skipped, not the spec
            if not isinstance(err, MissingExplanations):
                err = MissingExplanations(f"explanations for '{exp.id}' unavailable: {type(err).__name__}: {err}")
            self._expl[key] = err
            raise err
        self._expl[key] = found
        return found

    def texts_for(self, exp: Experiment, seed: int) -> Explanations:
        """The texts one run reads: the store's, or a control's made from them (shuffled, permuted by
        the run seed) or from the labels (oracle). info["probe_table"] is what the probe reads: the
        same for every seed (a shuffled row's probe reads seed 0's permutation)."""
        from reasonrec.bench import controls

        if exp.control == "oracle":
            key = (exp.users, exp.q)
            if key not in self._oracle:
                data = self.slice(exp.users)
                table = controls.oracle_texts(data.samples, data.items, exp.q)
                digest = hashlib.sha256(f"oracle:{exp.q}".encode())
                digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
                self._oracle[key] = Explanations(table, {
                    "text_columns": ("positive", "negative"), "strip_prefixes": (), "coverage": 1.0,
                    "model_id": "oracle", "llm": "oracle", "fingerprint": digest.hexdigest()[:16],
                    "probe_table": table})
            return self._oracle[key]
        found = self.explanations(exp)
        if exp.control != "shuffled":
            return Explanations(found.table, {**found.info, "probe_table": found.table})
        samples, cols = self.slice(exp.users).samples, found.info["text_columns"]
        # a permutation within each split leaves each split's texts the same multiset, so the encoder
        # fitted on the real texts serves every seed (one fit and its cache instead of one per seed)
        return Explanations(controls.shuffled_texts(found.table, samples, seed, cols),
                            {**found.info, "probe_table": controls.shuffled_texts(found.table, samples, 0, cols),
                             "encoder_table": found.table})

    def _lookup(self, exp: Experiment) -> Explanations:
        from reasonrec.explain.generate import ExplainConfig, Explainer
        from reasonrec.explain.store import ExplanationStore
        from reasonrec.explain.templates import load_templates

        if not Path(self.spec.store).is_file() and not self._import_cache():
            raise MissingExplanations(f"no explanation store at {self.spec.store}. Generate texts with:\n"
                                      f"    {self.explain_command(exp)}\n"
                                      "or import the committed cache with `reasonrec cache import FILE`",
                                      f"no explanation store at {self.spec.store}")
        data = self.slice(exp.users)
        model_id = self.model_id(exp.llm)
        templates = load_templates(data.card.get("domain", "movie"))
        explainer = Explainer(ModelIdOnly(model_id), ExplanationStore(self.spec.store), templates,
                              ExplainConfig(variant=exp.variant, profiles=exp.profiles))
        tasks = templates.variant_tasks(exp.variant)
        table = explainer.lookup(data.samples, data.items)
        for t in tasks:
            if t not in table.columns:
                table[t] = None
        table = table[["sample_id", *tasks]].sort_values("sample_id").reset_index(drop=True)
        missing = float(table[tasks].isna().any(axis=1).mean()) if len(table) else 1.0
        digest = hashlib.sha256(model_id.encode())
        digest.update(pd.util.hash_pandas_object(table.fillna("\x00"), index=False).to_numpy().tobytes())
        info = {"text_columns": tuple(tasks),
                "strip_prefixes": templates.strip_prefixes(exp.variant),
                "coverage": round(1.0 - missing, 4), "model_id": model_id, "fingerprint": digest.hexdigest()[:16],
                "explainer": explainer}
        return Explanations(table, info)

    def _import_cache(self) -> bool:
        """Import the spec's committed cache exports into the store, once per runner."""
        if self._imported or not self.spec.cache:
            return False
        self._imported = True
        from reasonrec.explain.store import ExplanationStore

        files = sorted({f for pattern in self.spec.cache for f in Path().glob(str(pattern))})
        added = 0
        for f in files:
            n = ExplanationStore(self.spec.store).import_parquet(f)
            added += n
            self.echo(f"imported {n:,} rows from {f} into {self.spec.store}")
        self._expl = {k: v for k, v in self._expl.items() if not isinstance(v, Exception)}
        return added > 0


    def write_text_stats(self) -> pd.DataFrame | None:
        """texts.csv for the texts read in this invocation; rows of texts not read now are kept."""
        f = self.out / "texts.csv"
        keys = ["slice", "llm", "variant", "profiles", "column"]
        rows = []
        for (users, llm, variant, profiles), found in self._expl.items():
            if isinstance(found, Exception):
                continue
            for column in found.info["text_columns"]:
                rows.append({"slice": "all" if users is None else f"u{users}", "llm": llm, "variant": variant,
                             "profiles": profiles, "column": column, **text_stats(found.table[column])})
        if not rows:
            return None
        new = pd.DataFrame(rows)
        if f.is_file():
            old = pd.read_csv(f)
            fresh = set(map(tuple, new[keys].astype(str).to_numpy()))
            old = old[[tuple(r) not in fresh for r in old[keys].astype(str).to_numpy()]]
            new = pd.concat([old, new], ignore_index=True)
        new = new.sort_values(keys).reset_index(drop=True)
        new.to_csv(f, index=False)
        return new

    def explanation_plan(self, only=None) -> list[dict]:
        """Per text-reading experiment: slice, coverage in the store, and the command that fills it."""
        rows = []
        for exp in self.spec.experiments:
            if (only and exp.id not in only) or not exp.uses_text or exp.control == "oracle":
                continue
            from reasonrec.explain.templates import load_templates

            data = self.slice(exp.users)
            tasks = load_templates(data.card.get("domain", "movie")).variant_tasks(exp.variant)
            row = {"id": exp.id, "slice": exp.slice_name, "llm": exp.llm, "variant": exp.variant,
                   "profiles": exp.profiles, "samples": len(data.samples), "prompts": len(data.samples) * len(tasks)}
            try:
                row["coverage"] = self.explanations(exp).info["coverage"]
                row["ready"] = True
            except MissingExplanations as err:
                row["ready"] = False
                row["coverage"] = None
                row["message"] = err.short
            row["command"] = self.explain_command(exp)
            rows.append(row)
        return rows


def text_stats(texts: pd.Series) -> dict:
    """Coverage and variety of one text column: distinct ratio, mean words, the commonest text's share."""
    present = texts.dropna().astype(str)
    counts = present.value_counts()
    n = len(present)
    return {"samples": len(texts), "with_text": n,
            "distinct_ratio": round(len(counts) / n, 4) if n else None,
            "mean_words": round(float(present.str.split().str.len().mean()), 2) if n else None,
            "top_share": round(float(counts.iloc[0]) / n, 4) if n else None,
            "top_text": counts.index[0] if n else None}
