"""Text -> vectors. Every encoder has `fit(train_texts, valid_texts)`, `encode(texts) -> (N, dim)`,
`dim`, `save(dir)` and `load(dir)`; the recommender projects whatever width it gets to its own."""

from __future__ import annotations

import json
from pathlib import Path

from reasonrec.errors import ReasonrecError

ENCODERS = {
    "autoencoder": "reasonrec.encode.autoencoder:AutoencoderEncoder",  # the paper's, 8-d
    "sentence": "reasonrec.encode.sentence:SentenceEncoder",            # MiniLM, 384-d (Ablation 2)
    "llm": "reasonrec.encode.llm_hidden:LLMHiddenEncoder",              # the LLM's own hidden states (Ablation 2)
}


def _cls(name: str):
    import importlib

    if name not in ENCODERS:
        raise ReasonrecError(f"unknown encoder '{name}'; choose one of {sorted(ENCODERS)}")
    module, cls = ENCODERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_encoder(name: str, **kwargs):
    if name == "autoencoder" and kwargs:
        from reasonrec.encode.autoencoder import AutoencoderConfig

        return _cls(name)(AutoencoderConfig(**kwargs))
    return _cls(name)(**kwargs)


def save_encoder(encoder, path: Path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "encoder.json").write_text(json.dumps({"name": encoder.name}))
    encoder.save(path)


def load_encoder(path: Path):
    name = json.loads((path / "encoder.json").read_text())["name"]
    return _cls(name).load(path)
