"""`reasonrec precompute`: write the explanations the service will serve, before it serves them.

For each user (all, or the given ones): score every item the model knows that the user has not
interacted with under the user's current history (the bundle's, plus any events logged by the
service), take the top-N, queue them as pair jobs in the service's state DB, and drain the
queue with the LLM backend through the same worker the server runs. It is resumable twice over:
the queue keeps what is not done, and the explanation store never regenerates a row it has. A
server started afterwards (or already running, after a restart) loads the results at startup.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from reasonrec.errors import ReasonrecError

log = logging.getLogger("reasonrec.serve.precompute")


def precompute(bundle_dir: str | Path, store_path: str | Path, llm="embedded", *, users: list[str] | None = None,
               top_n: int = 20, state_path: str | Path | None = None, domain: str | None = None,
               batch_size: int = 16, profiles: bool = True, max_seconds: float | None = None,
               progress: bool = True) -> dict:
    """Returns a summary: users, pairs queued / done / failed, rows generated, seconds, rate."""
    from reasonrec.explain.templates import load_templates
    from reasonrec.serve.app import _bundle_domain, default_state_path, load_bundle
    from reasonrec.serve.index import ServingIndex
    from reasonrec.serve.storage import open_serving_files
    from reasonrec.serve.worker import Worker, resolve_llm

    started = time.perf_counter()
    if top_n < 1:
        raise ReasonrecError("top_n must be at least 1")
    rec = load_bundle(Path(bundle_dir))
    if not rec.uses_text:
        raise ReasonrecError(f"{bundle_dir}: this model does not read explanation texts "
                             f"(explanations={rec.config.explanations!r}); nothing to precompute")
    backend = resolve_llm(llm)
    if backend is None:
        raise ReasonrecError("precompute needs an LLM backend (--llm)")
    store, state = open_serving_files(Path(store_path), Path(state_path or default_state_path(store_path)))
    index = ServingIndex(rec, state, store=None, interaction_reasons=False)
    templates = load_templates(domain or _bundle_domain(Path(bundle_dir)) or "movie")
    worker = Worker(index, state, store, backend, templates, top_n=top_n, batch_size=batch_size, profiles=profiles)

    if users is None:
        users = sorted(index.history)
    else:
        users = [str(u) for u in users]
        unknown = [u for u in users if not index.exists(u)]
        if unknown:
            raise ReasonrecError(f"unknown user id(s): {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")

    queued = 0
    for user in tqdm(users, desc="ranking", unit="user", disable=not progress):
        rows = index.default_pool(user)
        if not len(rows):
            continue
        scores = index.score_rows(user, rows, None, attention=False, model=worker.model).scores
        n = min(top_n, len(rows))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        queued += state.enqueue_pairs(user, index.history.get(user, []), [index.catalog_ids[r] for r in rows[top]])

    depth = state.depth()
    bar = tqdm(total=depth, desc="explaining", unit="job", disable=not progress, smoothing=0.05)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    drained = True
    last = 0
    while True:
        busy = worker.step()
        s = worker.stats
        finished = s.jobs_done + s.jobs_failed + s.jobs_superseded
        bar.update(finished - last)
        last = finished
        if not busy:
            break
        if deadline is not None and time.monotonic() > deadline:
            drained = False
            break
    bar.close()
    s = worker.stats
    seconds = time.perf_counter() - started
    summary = {"users": len(users), "pairs_queued": queued, "queue_depth_before": depth,
               "jobs_done": s.jobs_done, "jobs_failed": s.jobs_failed, "jobs_superseded": s.jobs_superseded,
               "generated": s.generated, "generation_failures": s.failed, "drained": drained,
               "queue_depth_after": state.depth(), "model_id": backend.model_id, "seconds": round(seconds, 2),
               "rows_per_second": round(s.generated / seconds, 3) if seconds else 0.0}
    log.info("precompute: %s", summary)
    return summary
