"""The estimator: `Recommender(...).fit(data, explanations)`, `.predict`, `.explain`, `.save`, `load`.

`LRRecsys` is a Recommender whose model is the LR-Recsys DNN and whose explanations are encoded
by the paper's autoencoder. Any zoo model takes the same explanations with one flag
(`explanations="text"`), and Ablation 1 replaces them with free vectors (`explanations="free"`).
The saved bundle is a directory: config, feature vocabularies, weights, the fitted text encoder
and the sample texts, so `reasonrec.load(dir)` and the service need nothing else.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reasonrec.config import RecommenderConfig, merge, nest, resolve, validate
from reasonrec.data.prepare import Prepared
from reasonrec.encode import get_encoder, load_encoder, save_encoder
from reasonrec.errors import ReasonrecError
from reasonrec.models.base import ModelConfig, build_model, standardise_explanations
from reasonrec.train.features import Featurizer, FeatureSpec, TensorData
from reasonrec.train.trainer import FitResult, evaluate, fit, predict, seed_everything

BUNDLE_VERSION = 2   # 2: the config is the resolved pydantic RecommenderConfig


class Recommender:
    """`Recommender(model="deepfm", lr=3e-3)` resolves the settings through `reasonrec.config`
    (defaults <- the model's DEFAULTS <- `preset` <- these keywords); `Recommender(config)` takes an
    already resolved config, with keywords applied on top."""

    def __init__(self, config: RecommenderConfig | None = None, **overrides):
        if config is None:
            cfg = resolve(overrides)
        else:
            if {"model", "preset"} & set(overrides):
                raise ReasonrecError("model and preset choose the defaults a config is resolved from: pass them to "
                                     "reasonrec.config.resolve(...), not on top of a resolved config")
            cfg = validate(merge(config.model_dump(), nest(overrides)))
        self.config = cfg
        self.featurizer: Featurizer | None = None
        self.encoder = None
        self.model: torch.nn.Module | None = None
        self.fit_result: FitResult | None = None
        self.texts: pd.DataFrame | None = None    # sample texts kept for .explain()
        self.user_history: dict[str, list[str]] = {}
        self.items: pd.DataFrame | None = None
        self.domain = "movie"

    # --- data plumbing ---------------------------------------------------------------------

    @property
    def uses_text(self) -> bool:
        return self.config.explanations == "text"

    def _texts(self, samples: pd.DataFrame, explanations: pd.DataFrame | None) -> list[list[str]]:
        """One list of strings per text column, aligned with `samples`; missing texts are ""."""
        cols = list(self.config.text_columns)
        if explanations is None:
            raise ReasonrecError("this model reads explanations: pass the explanations table "
                                 f"(sample_id + {cols}), e.g. from `Explainer.lookup`")
        missing = [c for c in cols if c not in explanations.columns]
        if missing:
            raise ReasonrecError(f"explanations table lacks column(s) {missing}; has {list(explanations.columns)}")
        joined = samples[["sample_id"]].merge(explanations[["sample_id", *cols]], on="sample_id", how="left")
        out = []
        for col in cols:
            texts = joined[col].fillna("").astype(str).tolist()
            for prefix in self.config.strip_prefixes:
                texts = [t[len(prefix):].lstrip() if t.startswith(prefix) else t for t in texts]
            out.append(texts)
        return out

    def _tensors(self, samples: pd.DataFrame, items, users, explanations=None) -> TensorData:
        vectors = None
        if self.uses_text:
            cols = self._texts(samples, explanations)
            encoded = [self.encoder.encode(texts) for texts in cols]
            vectors = (encoded[0], encoded[1] if len(encoded) > 1 else np.zeros_like(encoded[0]))
        return self.featurizer.transform(samples, items, users, vectors)

    # --- fit / predict ---------------------------------------------------------------------

    def fit(self, data: Prepared, explanations: pd.DataFrame | None = None, progress: bool = False,
            encoder=None) -> "Recommender":
        """`encoder`: an already fitted text encoder to use as is (the benchmark runner reuses one
        fitted on the same train/valid texts across seeds and tasks); None fits a fresh one."""
        cfg = self.config
        samples = data.samples
        train, valid = samples[samples["split"] == "train"], samples[samples["split"] == "valid"]
        if len(train) == 0 or len(valid) == 0:
            raise ReasonrecError("fit needs train and valid samples (see `reasonrec data prepare`)")
        scale = tuple(data.card.get("rating_scale", (1.0, 5.0)))
        self.featurizer = Featurizer(side_features=cfg.side_features).fit(train, data.items, data.users, scale)
        started = time.perf_counter()
        if self.uses_text and encoder is not None:
            self.encoder = encoder
        elif self.uses_text:
            self.encoder = get_encoder(cfg.encoder, **cfg.encoder_options)
            train_texts = [t for col in self._texts(train, explanations) for t in col]
            valid_texts = [t for col in self._texts(valid, explanations) for t in col]
            self.encoder.fit(train_texts, valid_texts, progress=progress)   # train split only
        self.encoder_seconds = time.perf_counter() - started
        train_t = self._tensors(train, data.items, data.users, explanations)
        valid_t = self._tensors(valid, data.items, data.users, explanations)
        seed_everything(cfg.train.seed, cfg.train.threads)  # weights are initialised here: seed first
        self.model = self._build()
        if self.uses_text:
            standardise_explanations(self.model, train_t.tensors)
        self.fit_result = fit(self.model, train_t, valid_t, cfg.train.model_copy(update={"progress": progress}),
                              cfg.task, scale)
        self._remember(data, explanations)
        return self

    def _build(self) -> torch.nn.Module:
        cfg = self.config
        mcfg = ModelConfig(**self.featurizer.spec.cardinalities(), embed_dim=cfg.embed_dim,
                           expl_dim=self.encoder.dim if self.uses_text else 0,
                           expl_mode="free" if cfg.explanations == "free" else "text",
                           expl_slots=len(cfg.text_columns) if cfg.explanations != "none" else 0,
                           fusion=cfg.fusion, expl_dropout=cfg.expl_dropout,
                           side_features=cfg.side_features, pooled_history=cfg.pooled_history,
                           hist_dropout=cfg.hist_dropout,
                           init_std=cfg.init_std, mlp=tuple(cfg.mlp), dropout=cfg.dropout,
                           extra=dict(cfg.extra))
        return build_model(cfg.model, mcfg)

    def _remember(self, data: Prepared, explanations):
        """What .explain() needs later: texts per sample, each user's latest history, item titles."""
        s = data.samples
        keep = s[["sample_id", "user_id", "item_id", "timestamp", "history", "rating", "label", "split"] +
                 [c for c in s.columns if c.startswith("ctx_")]].copy()
        # plain lists: prepare() may hold histories as an Arrow list column, which a bundle's Parquet
        # round trip cannot rebuild as a pandas dtype
        keep["history"] = pd.Series([list(h) for h in keep["history"]], index=keep.index, dtype=object)
        if explanations is not None:
            cols = [c for c in self.config.text_columns if c in explanations.columns]
            keep = keep.merge(explanations[["sample_id", *cols]], on="sample_id", how="left")
        self.texts = keep
        last = s.sort_values("timestamp", kind="stable").groupby("user_id").tail(1)
        self.user_history = {u: (list(h) + [i])[-5:] for u, h, i in zip(last["user_id"], last["history"], last["item_id"])}
        self.items = data.items[["item_id", "title"]].copy()
        self.domain = data.card.get("domain", "movie")
        self._users = data.users
        self._items_full = data.items

    def _require_fitted(self):
        if self.model is None:
            raise ReasonrecError("this recommender is not fitted yet: call fit() or reasonrec.load()")

    def predict(self, samples: pd.DataFrame, explanations: pd.DataFrame | None = None, items=None, users=None,
                return_attention: bool = False):
        self._require_fitted()
        data = self._tensors(samples, self._items_full if items is None else items,
                             self._users if users is None else users, explanations)
        return predict(self.model, data, self.config.task, self.featurizer.spec.rating_scale,
                       return_attention=return_attention)

    def evaluate(self, data: Prepared, explanations: pd.DataFrame | None = None, split: str = "test") -> dict:
        self._require_fitted()
        part = data.samples[data.samples["split"] == split]
        tensors = self._tensors(part, data.items, data.users, explanations)
        return evaluate(self.model, tensors, self.config.task, self.featurizer.spec.rating_scale)

    def explain(self, user_id: str, item_id: str) -> dict:
        """Score one (user, item) pair with its reasons and where the model looked.

        Uses the pair's stored explanations when the pair was seen (any split); otherwise scores
        with the user's latest history and says that no explanation is available."""
        self._require_fitted()
        rows = self.texts[(self.texts["user_id"] == str(user_id)) & (self.texts["item_id"] == str(item_id))]
        if len(rows):
            row = rows.sort_values("timestamp").iloc[[-1]]
            texts = {c: (row[c].iloc[0] if c in row.columns and isinstance(row[c].iloc[0], str) else None)
                     for c in self.config.text_columns}
            return self._score_row(row, texts)
        return self._score_row(self._new_pair(user_id, item_id), {c: None for c in self.config.text_columns})

    def explain_live(self, user_id: str, item_id: str, explainer) -> dict:
        """Like `explain` for a pair never seen before: its explanations are generated now (or read
        from the store if an earlier call wrote them) with the user's latest history."""
        self._require_fitted()
        row = self._new_pair(user_id, item_id)
        explainer.run(row, self._items_full, progress=False)
        found = explainer.lookup(row, self._items_full)
        texts = {c: (found[c].iloc[0] if c in found.columns else None) for c in self.config.text_columns}
        return self._score_row(row, texts)

    def _new_pair(self, user_id: str, item_id: str) -> pd.DataFrame:
        row = pd.DataFrame([{"sample_id": -1, "user_id": str(user_id), "item_id": str(item_id), "timestamp": 0,
                             "history": self.user_history.get(str(user_id), []), "rating": np.nan, "label": 0,
                             "split": "new"}])
        for c in self.texts.columns:
            if c.startswith("ctx_"):
                row[c] = 0
        return row

    def _score_row(self, row: pd.DataFrame, texts: dict) -> dict:
        expl = pd.DataFrame([{"sample_id": row["sample_id"].iloc[0], **{k: v or "" for k, v in texts.items()}}])
        score, attn = self.predict(row.assign(label=0, rating=0.0), expl if self.uses_text else None,
                                   return_attention=True)
        user_id, item_id = row["user_id"].iloc[0], row["item_id"].iloc[0]
        out = {"user_id": user_id, "item_id": item_id, "score": float(score[0]),
               "task": self.config.task, "explanations": texts,
               "has_explanations": all(v for v in texts.values()) if self.uses_text else False,
               "known_user": user_id in self.featurizer.spec.users,
               "known_item": item_id in self.featurizer.spec.items,
               "history": list(row["history"].iloc[0])}
        names = getattr(self.model, "input_names", None)
        if attn is not None and names:
            shares = attn[0].mean(axis=0)
            out["attention"] = {n: round(float(v), 4) for n, v in zip(names, shares)}
        return out

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        self._require_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.config.model_dump(mode="json")
        (path / "bundle.json").write_text(json.dumps({"bundle_version": BUNDLE_VERSION, "config": cfg,
                                                      "domain": self.domain,
                                                      "fit": asdict(self.fit_result) if self.fit_result else None},
                                                     indent=2, default=str))
        self.featurizer.spec.save(path / "features.json")
        torch.save(self.model.state_dict(), path / "model.pt")
        if self.encoder is not None:
            save_encoder(self.encoder, path / "encoder")
        self.texts.to_parquet(path / "texts.parquet", index=False)
        self._items_full.to_parquet(path / "items.parquet", index=False)
        self._users.to_parquet(path / "users.parquet", index=False)
        (path / "user_history.json").write_text(json.dumps(self.user_history))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        path = Path(path)
        meta_file = path / "bundle.json"
        if not meta_file.is_file():
            raise ReasonrecError(f"{path}: not a model bundle (no bundle.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("bundle_version") != BUNDLE_VERSION:
            raise ReasonrecError(f"{path}: bundle version {meta.get('bundle_version')}; this reasonrec reads version "
                                 f"{BUNDLE_VERSION} — train the model again (`reasonrec train ... --out DIR`)")
        rec = cls(validate(meta["config"]))
        rec.featurizer = Featurizer(FeatureSpec.load(path / "features.json"), rec.config.side_features)
        if (path / "encoder").is_dir():
            rec.encoder = load_encoder(path / "encoder")
        rec.model = rec._build()
        rec.model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
        rec.model.eval()
        if meta.get("fit"):
            rec.fit_result = FitResult(**meta["fit"])
        rec.texts = pd.read_parquet(path / "texts.parquet")
        rec.texts["history"] = rec.texts["history"].map(list)
        rec._items_full = pd.read_parquet(path / "items.parquet")
        rec._users = pd.read_parquet(path / "users.parquet")
        rec.items = rec._items_full[["item_id", "title"]]
        rec.user_history = json.loads((path / "user_history.json").read_text())
        rec.domain = meta.get("domain", "movie")
        return rec


class LRRecsys(Recommender):
    """LR-Recsys: autoencoder-encoded contrastive explanations into the LR-Recsys DNN, with its robust
    defaults; `LRRecsys(preset="faithful")` is the paper's exact setting (see `models/lr_recsys.py`)."""

    def __init__(self, config: RecommenderConfig | None = None, **overrides):
        if config is None:
            overrides.setdefault("model", "lr-recsys")
        elif config.model != "lr-recsys":
            raise ReasonrecError(f"LRRecsys takes an lr-recsys config, not '{config.model}'; use Recommender")
        super().__init__(config, **overrides)
