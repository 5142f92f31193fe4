"""Text encoders for bench runs: fitted once per train/valid split and set of texts, kept in memory
and on disk, and remembering each text's vector across seeds and tasks."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from reasonrec.data.prepare import Prepared

DEFAULT_ENCODER_CACHE = Path("artifacts/cache/bench-encoders")


class _MemoEncoder:
    """A fitted encoder whose encode() remembers each text's vector (the same texts are encoded for
    every seed and task of an experiment). With a `store` file the vectors also outlive the process:
    a frozen LLM's hidden states for the bench slice take ~20 min on 2 cores, so they are computed once."""

    def __init__(self, inner, store: Path | None = None):
        self.inner, self.store = inner, store
        self.memo: dict[bytes, np.ndarray] = {}
        if store is not None and store.is_file():
            with np.load(store) as saved:
                self.memo = dict(zip(saved["keys"].tolist(), saved["vectors"]))

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def name(self):
        return self.inner.name

    @property
    def dim(self):
        return self.inner.dim

    def encode(self, texts) -> np.ndarray:
        texts = list(texts)
        keys = [hashlib.sha256(t.encode()).hexdigest()[:32].encode() for t in texts]
        new = {k: t for k, t in zip(keys, texts) if k not in self.memo}
        if new:
            self.memo.update(zip(new, np.asarray(self.inner.encode(list(new.values())), dtype="float32")))
            self._save()
        if not keys:
            return np.zeros((0, self.dim), dtype="float32")
        return np.stack([self.memo[k] for k in keys])

    def _save(self) -> None:
        if self.store is None:
            return
        tmp = self.store.with_name(f".{self.store.stem}.tmp.npz")
        np.savez(tmp, keys=np.array(list(self.memo), dtype="S32"), vectors=np.stack(list(self.memo.values())))
        tmp.replace(self.store)


class Encoders:
    """The runner's encoder cache (mixed into BenchRunner)."""

    def _encoder(self, rec, data: Prepared, table: pd.DataFrame) -> tuple[object, float, bool]:
        """A fitted text encoder for this train/valid split, reused across seeds, tasks and
        experiments that read the same texts (in memory, and on disk under `encoder_cache`)."""
        from reasonrec.encode import get_encoder, load_encoder, save_encoder

        cfg = rec.config
        s = data.samples
        train_texts = [t for col in rec._texts(s[s["split"] == "train"], table) for t in col]
        valid_texts = [t for col in rec._texts(s[s["split"] == "valid"], table) for t in col]
        h = hashlib.sha256(json.dumps([cfg.encoder, cfg.encoder_options], sort_keys=True, default=str).encode())
        for group in (train_texts, valid_texts):
            h.update(b"\x01")
            for t in group:
                h.update(t.encode())
                h.update(b"\x00")
        key = h.hexdigest()[:20]
        if key in self._encoders:
            return self._encoders[key], 0.0, True
        disk = self.encoder_cache / key if self.encoder_cache else None
        if disk is not None and (disk / "encoder.json").is_file():
            enc, seconds, cached = load_encoder(disk), 0.0, True
        else:
            started = time.perf_counter()
            enc = get_encoder(cfg.encoder, **cfg.encoder_options)
            enc.fit(train_texts, valid_texts, progress=self.progress)
            seconds, cached = time.perf_counter() - started, False
            self.echo(f"      fitted the {cfg.encoder} encoder on {len(train_texts):,} texts in {seconds:.1f} s")
            if disk is not None:
                tmp = disk.parent / f".{key}.tmp"
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
                save_encoder(enc, tmp)
                shutil.rmtree(disk, ignore_errors=True)
                tmp.rename(disk)
        wrapped = _MemoEncoder(enc, disk / "vectors.npz" if disk is not None else None)
        self._encoders[key] = wrapped
        return wrapped, seconds, cached