"""`make demo`: the whole pipeline on the embedded default (MovieLens-100K + SmolLM2-135M)."""

from __future__ import annotations

import time
from pathlib import Path

ARTIFACTS = Path("artifacts")


def main() -> None:
    from reasonrec.data.prepare import prepare
    from reasonrec.data.readers import read

    started = time.perf_counter()
    prepared = prepare(read("ml-100k"))
    out = prepared.save(ARTIFACTS / "data" / "ml-100k")
    print((out / "card.md").read_text())
    print(f"demo finished in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
