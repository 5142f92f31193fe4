"""The explanation store: a durable key -> text map (SQLite in WAL mode).

key = sha256(model id, template id@version, rendered prompt, decoding parameters), so the same
question to the same model with the same settings is answered once, forever; anything that
changes the answer changes the key. Rows are written in one transaction per batch: a killed job
loses at most the batch in flight, and a rerun continues from what is there. Parquet export/import
shares a cache between machines (the committed benchmark cache is one such export).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from reasonrec.llm.base import GenerationParams, Prompt
from reasonrec.sqlite import LocalDB

COLUMNS = ["key", "model_id", "template", "task", "text", "raw", "status", "repairs", "tokens",
           "prompt_tokens", "created"]


def make_key(model_id: str, template_id: str, prompt: Prompt, params: GenerationParams) -> str:
    payload = json.dumps([model_id, template_id, prompt.canonical(), params.key()], ensure_ascii=False,
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Entry:
    key: str
    model_id: str
    template: str
    task: str
    text: str          # cleaned sentence, forced prefix included
    raw: str           # what the model produced, for audits of the clean-up
    status: str        # ok | repaired | failed
    repairs: str = ""  # comma-separated repair tags, or the failure reason
    tokens: int = 0
    prompt_tokens: int = 0
    created: float = 0.0


class ExplanationStore(LocalDB):
    def __init__(self, path: str | Path):
        super().__init__(path)
        with self._conn() as con:
            con.execute("""CREATE TABLE IF NOT EXISTS generations (
                key TEXT PRIMARY KEY, model_id TEXT NOT NULL, template TEXT NOT NULL, task TEXT NOT NULL,
                text TEXT NOT NULL, raw TEXT NOT NULL, status TEXT NOT NULL, repairs TEXT NOT NULL,
                tokens INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, created REAL NOT NULL)""")

    def put_many(self, entries: Iterable[Entry]) -> int:
        rows = [(e.key, e.model_id, e.template, e.task, e.text, e.raw, e.status, e.repairs, e.tokens,
                 e.prompt_tokens, e.created or time.time()) for e in entries]
        if not rows:
            return 0
        con = self._conn()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(f"INSERT OR REPLACE INTO generations ({','.join(COLUMNS)}) "
                            f"VALUES ({','.join('?' * len(COLUMNS))})", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(rows)

    def get_many(self, keys: list[str], include_failed: bool = True) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        con = self._conn()
        for i in range(0, len(keys), 900):  # stay under SQLite's host-parameter limit
            chunk = keys[i:i + 900]
            cur = con.execute(f"SELECT {','.join(COLUMNS)} FROM generations WHERE key IN "
                              f"({','.join('?' * len(chunk))})", chunk)
            for row in cur:
                entry = Entry(*row)
                if include_failed or entry.status != "failed":
                    out[entry.key] = entry
        return out

    def has(self, keys: list[str]) -> set[str]:
        return set(self.get_many(keys))

    def count(self, status: str | None = None) -> int:
        if status:
            return self._conn().execute("SELECT COUNT(*) FROM generations WHERE status=?", (status,)).fetchone()[0]
        return self._conn().execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def frame(self, where: str = "", params: tuple = ()) -> pd.DataFrame:
        return pd.read_sql_query(f"SELECT {','.join(COLUMNS)} FROM generations {where}", self._conn(), params=params)

    def export_parquet(self, path: str | Path, model_id: str | None = None) -> int:
        df = self.frame("WHERE model_id=?", (model_id,)) if model_id else self.frame()
        df = df.sort_values("key").reset_index(drop=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False, compression="zstd", compression_level=19)
        return len(df)

    def import_parquet(self, path: str | Path) -> int:
        """Add rows from an export. Rows already present are kept (first writer wins), except that a
        usable imported row replaces a stored failure (a cache made after a clean-up fix)."""
        df = pd.read_parquet(path)
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            from reasonrec.errors import DataError

            raise DataError(f"not an explanation export: missing column(s) {missing}", file=str(path))
        con = self._conn()
        con.execute("BEGIN IMMEDIATE")
        changes = con.total_changes
        con.executemany(f"INSERT INTO generations ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))}) "
                        f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in COLUMNS[1:])} "
                        "WHERE generations.status = 'failed' AND excluded.status != 'failed'",
                        df[COLUMNS].astype(object).itertuples(index=False, name=None))
        con.execute("COMMIT")
        return con.total_changes - changes
