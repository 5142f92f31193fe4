"""The one typed configuration of a recommender: model, explanations/encoder and training.

Every default is spelt once. A value resolves in layers, later winning:

    1. the field defaults below (shared by every model);
    2. the model's own `DEFAULTS`, beside it in `reasonrec/models/<model>.py`;
    3. a named preset of that model (`PRESETS`, e.g. LR-Recsys `faithful` = the paper's settings);
    4. what the caller sets (estimator keywords, `reasonrec train` options, a bench experiment).

`resolve(...)` does the layering and returns a validated `RecommenderConfig`; an unknown key is an
error that names it, an `extra` knob included (a model's knobs are the keys of its DEFAULTS["extra"]
and of its `KNOBS`, knobs whose defaults the model applies itself and the config does not spell
out). A saved bundle stores the resolved config, so a later change of defaults never changes what a
bundle loads. The estimator, `reasonrec train`, the bench specs, `reasonrec align`
and the service all go through here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reasonrec.errors import ReasonrecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(_Strict):
    """The fit loop (`reasonrec.train.trainer.fit`)."""

    lr: float = 1e-3
    batch_size: int = 512
    epochs: int = 100
    patience: int = 10                      # epochs without validation improvement before stopping
    monitor: Literal["auto", "auc", "logloss", "rmse", "mae"] = "auto"   # auto: AUC / RMSE by task
    weight_decay: float = 0.0               # Adam's L2 on every parameter
    # L2 on the embeddings, added to each batch's loss. 3e-3 on whole tables won the mean validation AUC
    # over 3 seeds for every model on full ML-100K but the two with a GMF product, which take the L2 on the
    # rows each batch looked up (their DEFAULTS; docs/parity.md, benchmarks/parity/tuning.csv)
    embed_reg: float = 3e-3
    # tables: the whole of every table, each batch (FuxiCTR's embedding_regularizer; rare rows shrink as fast
    # as popular ones); batch: the looked-up rows, per sample (RecBole's EmbLoss; popular rows most)
    embed_reg_on: Literal["tables", "batch"] = "tables"
    supervision: Literal["label", "soft"] = "label"   # soft: BCE against the rating scaled to [0, 1] (seed 003)
    seed: int = 0
    threads: int | None = 1                 # tiny models: one thread beats two on a small, shared CPU
    checkpoint_dir: str | None = None       # saves the best weights + state each epoch; resumes from it
    nproc: int = Field(1, ge=1)             # data-parallel processes (DDP, gloo); the global batch stays batch_size
    progress: bool = False


class RecommenderConfig(_Strict):
    model: str = "lr-recsys"
    preset: str | None = None               # a named preset of the model (see its PRESETS)
    task: Literal["classification", "regression"] = "classification"
    explanations: Literal["text", "free", "none"] = "text"   # free = Ablation 1 (learnable vectors)
    encoder: str = "autoencoder"            # autoencoder | sentence | llm
    text_columns: tuple[str, ...] = ("positive", "negative")
    strip_prefixes: tuple[str, ...] = ()    # forced answer starts, removed before encoding
    # residual: standardised, gated codes added to the candidate item's token (a closed gate leaves the
    # model exactly its no-explanation self); gated: the same as two extra tokens; raw: the paper's tokens
    fusion: Literal["residual", "gated", "raw"] = "residual"
    expl_dropout: float = 0.0               # zero a training sample's explanation vectors with this probability
    embed_dim: int = 10
    init_std: float = 0.03                  # normal init of every embedding table
    side_features: bool = True              # the same inputs for every model compared
    pooled_history: bool = False            # the history's mean item embedding as one more field (field models)
    # drop each history item with this probability while training: 0 -> 0.3 lifted the mean validation AUC
    # of every model that reads the sequence (3 seeds, full ML-100K; benchmarks/parity)
    hist_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    mlp: tuple[int, ...] = (128, 128, 128)
    dropout: float = 0.2
    extra: dict = {}                        # model-specific knobs (heads, layers, ...), read by the model
    encoder_options: dict = {}
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _monitor_fits_task(self):
        allowed = {"classification": ("auto", "auc", "logloss"), "regression": ("auto", "rmse", "mae")}[self.task]
        if self.train.monitor not in allowed:
            raise ValueError(f"monitor '{self.train.monitor}' does not fit task {self.task}; choose one of {allowed}")
        return self


TRAIN_KEYS = frozenset(TrainConfig.model_fields)
TOP_KEYS = frozenset(RecommenderConfig.model_fields)


NESTED = ("train", "extra", "encoder_options")   # merged key by key, so a layer adds to a preset's knobs


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base` (both in the config's shape); NESTED keys merge key by key."""
    out = dict(base)
    for key, value in over.items():
        both = key in NESTED and isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = {**out[key], **value} if both else value
    return out


def nest(overrides: dict) -> dict:
    """Flat keyword overrides -> the config's shape: TrainConfig keys (lr, seed, ...) go under
    `train`; an unknown key is an error naming it."""
    out: dict = {}
    for key, value in overrides.items():
        if key == "train":
            out["train"] = {**out.get("train", {}), **dict(value or {})}
        elif key in TOP_KEYS:
            out[key] = value
        elif key in TRAIN_KEYS:
            out.setdefault("train", {})[key] = value
        else:
            raise ReasonrecError(f"unknown option '{key}'; options are {sorted(TOP_KEYS | TRAIN_KEYS)}")
    return out


def model_layers(model: str, preset: str | None) -> list[dict]:
    """The model's DEFAULTS and, if named, its preset (layers 2 and 3)."""
    from reasonrec.models.base import model_module

    module = model_module(model)
    layers = [getattr(module, "DEFAULTS", {})]
    if preset is not None:
        presets = getattr(module, "PRESETS", {})
        if preset not in presets:
            raise ReasonrecError(f"model '{model}' has no preset '{preset}'; it has {sorted(presets) or 'none'}")
        layers.append(presets[preset])
    return layers


def resolve(overrides: dict | None = None, **kw) -> RecommenderConfig:
    """Field defaults <- model DEFAULTS <- preset <- `overrides` (flat or nested) -> validated config."""
    given = nest({**(overrides or {}), **kw})
    model = given.get("model", RecommenderConfig.model_fields["model"].default)
    merged: dict = {}
    for layer in [*model_layers(model, given.get("preset")), given]:
        merged = merge(merged, nest(layer))
    _check_knobs(model, merged.get("extra", {}))
    return validate(merged)


def _check_knobs(model: str, extra: dict) -> None:
    from reasonrec.models.base import model_module

    module = model_module(model)
    known = set(getattr(module, "KNOBS", {})) | set(getattr(module, "DEFAULTS", {}).get("extra", {}))
    bad = sorted(set(extra) - known)
    if bad:
        raise ReasonrecError(f"model '{model}' has no extra knob(s) {bad}; its knobs are {sorted(known) or 'none'}")


def validate(raw: dict) -> RecommenderConfig:
    """A full config (e.g. a bundle's) -> RecommenderConfig, with errors that name the field."""
    try:
        return RecommenderConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ReasonrecError(f"invalid recommender config: {problems}") from None
