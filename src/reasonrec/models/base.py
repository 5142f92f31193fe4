"""What every model shares: the config, the explanation input, field embeddings, an MLP, the registry.

Every model maps a batch (see `reasonrec.train.features`) to one logit per sample. Explanations
are optional for every model: with `expl_dim > 0` the batch's `expl_pos`/`expl_neg` vectors are
projected to the model's embedding width and used as two more fields, so "model X with reasons"
is a flag, not a new model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reasonrec.config import RecommenderConfig

_DEFAULT = RecommenderConfig()


@dataclass
class ModelConfig:
    n_users: int
    n_items: int
    history_len: int = 5
    ctx: list = field(default_factory=list)            # cardinality per context field
    user_fields: list = field(default_factory=list)    # cardinality per categorical user field
    item_fields: list = field(default_factory=list)
    n_categories: int = 1
    embed_dim: int = _DEFAULT.embed_dim
    expl_dim: int = 0                                  # width of incoming explanation vectors; 0 = none
    expl_mode: str = "text"                            # text | free (Ablation 1: learnable vectors instead)
    expl_slots: int = 2                                # 2 = positive + negative; 1 = one text (variants)
    fusion: str = _DEFAULT.fusion                      # residual | gated | raw (see FieldTokens)
    expl_dropout: float = _DEFAULT.expl_dropout
    side_features: bool = _DEFAULT.side_features       # use user/item side fields where the model can
    pooled_history: bool = _DEFAULT.pooled_history     # FieldTokens' mean-of-history field
    hist_dropout: float = _DEFAULT.hist_dropout        # FieldTokens.history_seq, training only
    init_std: float = _DEFAULT.init_std
    mlp: tuple = _DEFAULT.mlp
    dropout: float = _DEFAULT.dropout
    extra: dict = field(default_factory=dict)          # model-specific knobs (heads, layers, ...)

    @property
    def uses_explanations(self) -> bool:
        return self.expl_dim > 0 or self.expl_mode == "free"


EXPL_KEYS = ("expl_pos", "expl_neg")
FUSIONS = ("residual", "gated", "raw")


class ExplanationInput(nn.Module):
    """Explanation embeddings -> `slots` d-wide vectors (B, slots, d); slot 0 reads `expl_pos`,
    slot 1 `expl_neg`. `FieldTokens` decides where they go (see `fusion` there).

    mode "text", fusion "residual" or "gated": each code is standardised with the training split's
    per-dimension mean and std (buffers, so the bundle keeps them; set by `standardise`), projected,
    and scaled by a learned per-slot gate that starts at 0: raw codes (std 1-4, beside embeddings of
    std 0.03) would otherwise dominate FM and cross terms from the first step, and a gate that
    training leaves near zero switches an uninformative explanation off. `dropout` zeroes a
    training sample's explanation vectors with that probability.
    mode "text", fusion "raw": the paper's path, a linear projection of the codes as they are
    (identity-initialised when widths match, so the 8-d autoencoder codes enter unchanged).
    mode "free": LR-Recsys Ablation 1 — the same number of free learnable parameters, no text.

    Its parameters are drawn from a forked random stream, so every other weight of a model is
    initialised exactly as in the same model without explanations (same seed, same numbers).
    """

    def __init__(self, in_dim: int, d: int, mode: str = "text", slots: int = 2, fusion: str = _DEFAULT.fusion,
                 dropout: float = _DEFAULT.expl_dropout):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown explanation fusion '{fusion}'; choose one of {FUSIONS}")
        self.mode, self.slots, self.gated, self.dropout = mode, slots, fusion != "raw", dropout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 1)
            self._init_params(in_dim, d)

    def _init_params(self, in_dim: int, d: int) -> None:
        if self.mode == "free":
            self.free = nn.Parameter(torch.randn(self.slots, d) * 0.1)
            if self.gated:
                self.gate = nn.Parameter(torch.zeros(self.slots))
            return
        self.proj = nn.ModuleList(nn.Linear(in_dim, d) for _ in range(self.slots))
        if self.gated:
            self.register_buffer("mean", torch.zeros(self.slots, in_dim))
            self.register_buffer("std", torch.ones(self.slots, in_dim))
            self.gate = nn.Parameter(torch.zeros(self.slots))
            for lin in self.proj:
                nn.init.xavier_normal_(lin.weight)
                nn.init.zeros_(lin.bias)
        elif in_dim == d:
            for lin in self.proj:
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)

    @torch.no_grad()
    def standardise(self, vectors: dict) -> None:
        """Set the standardisation from the training split's codes ({"expl_pos": (N, in_dim), ...})."""
        if self.mode == "free" or not self.gated:
            return
        for s, key in enumerate(EXPL_KEYS[:self.slots]):
            v = torch.as_tensor(vectors[key], dtype=torch.float32)
            self.mean[s] = v.mean(0)
            self.std[s] = v.std(0).clamp(min=1e-6)

    def forward(self, batch: dict, batch_size: int) -> torch.Tensor:
        if self.mode == "free":
            x = self.free.unsqueeze(0).expand(batch_size, -1, -1)               # (B, slots, d)
        else:
            codes = [batch[key] for key in EXPL_KEYS[:self.slots]]
            if self.gated:
                codes = [(c - self.mean[s]) / self.std[s] for s, c in enumerate(codes)]
            x = torch.stack([lin(c) for lin, c in zip(self.proj, codes)], dim=1)   # (B, slots, d)
        if not self.gated:
            return x
        x = x * self.gate.view(1, -1, 1)                                        # closed gate: zeros
        if self.training and self.dropout:
            keep = (torch.rand(x.shape[0], 1, 1, device=x.device) >= self.dropout).to(x.dtype)
            x = x * keep                                                        # (B, slots, d)
        return x


def standardise_explanations(model: nn.Module, vectors: dict) -> None:
    """Give every explanation input of `model` the training split's code statistics."""
    for m in model.modules():
        if isinstance(m, ExplanationInput):
            m.standardise(vectors)


class SideFields(nn.Module):
    """Categorical context/user/item fields and item categories -> (B, F, d), one row per field."""

    def __init__(self, cfg: ModelConfig, d: int, include_ctx: bool = True):
        super().__init__()
        cards = (list(cfg.ctx) if include_ctx else [])
        if cfg.side_features:
            cards += list(cfg.user_fields) + list(cfg.item_fields)
        self.include_ctx = include_ctx
        self.side = cfg.side_features
        self.tables = nn.ModuleList(nn.Embedding(max(c, 2), d) for c in cards)
        self.cats = nn.EmbeddingBag(max(cfg.n_categories, 2), d, mode="mean", padding_idx=0) if cfg.side_features else None

    @property
    def n_fields(self) -> int:
        return len(self.tables) + (1 if self.cats is not None else 0)

    def forward(self, batch: dict) -> torch.Tensor:
        codes = []
        if self.include_ctx:
            codes.append(batch["ctx"])
        if self.side:
            codes += [batch["user_feats"], batch["item_feats"]]
        cols = torch.cat(codes, dim=1) if codes else batch["user"].new_zeros(len(batch["user"]), 0)
        out = [table(cols[:, i]) for i, table in enumerate(self.tables)]
        if self.cats is not None:
            out.append(self.cats(batch["item_cats"]))
        if not out:
            return torch.zeros(len(batch["user"]), 0, 1)
        return torch.stack(out, dim=1)


def mlp(in_dim: int, hidden: tuple, out_dim: int | None = 1, dropout: float = 0.0) -> nn.Sequential:
    """[Dropout, Linear, ReLU] per hidden layer, then a Linear to `out_dim`. Dropout acts on each
    layer's input, the field embeddings included (as RecBole's MLPLayers); Xavier-normal weights."""
    layers, width = [], in_dim
    for h in hidden:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


MODELS: dict[str, str] = {
    # name -> "module:Class"; imported lazily so one model's bug never breaks the others
    "lr-recsys": "reasonrec.models.lr_recsys:LRRecsysNet",
    "ncf": "reasonrec.models.ncf:NCF",
    "deepfm": "reasonrec.models.deepfm:DeepFM",
    "dcnv2": "reasonrec.models.dcnv2:DCNv2",
    "din": "reasonrec.models.din:DIN",
    "gru4rec": "reasonrec.models.gru4rec:GRU4Rec",
    "sasrec": "reasonrec.models.sasrec:SASRec",
    "bert4rec": "reasonrec.models.bert4rec:BERT4Rec",
    "fat": "reasonrec.models.fat:FAT",
    "apg": "reasonrec.models.apg:APG",
    "optfusion": "reasonrec.models.optfusion:OptFusion",
}


def model_module(name: str):
    """The module of model `name`: its class, DEFAULTS and PRESETS live there."""
    import importlib

    from reasonrec.errors import ReasonrecError

    if name not in MODELS:
        raise ReasonrecError(f"unknown model '{name}'; choose one of {sorted(MODELS)}")
    return importlib.import_module(MODELS[name].split(":")[0])


def build_model(name: str, cfg: ModelConfig) -> nn.Module:
    return getattr(model_module(name), MODELS[name].split(":")[1])(cfg)
