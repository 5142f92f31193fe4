"""Generation on Ray (`reasonrec explain --engine ray`, issue #18): Ray Data over the prompt batches,
an actor pool holding the LLM backends.

Only generation moves: the Explainer still builds the keys and batches (so the same batches reach
the model as in one process, and greedy outputs do not depend on the engine), and the driver still
cleans the answers and writes them to the store, one commit per batch, under today's keys. Actors
therefore need no access to the store, and a run that dies keeps every batch committed before;
a rerun skips them. An actor that dies is replaced and its batch sent again (Ray Data's defaults
for actor pools: max_restarts and max_task_retries -1).

Needs the optional extra: `pip install 'reasonrec[ray]'`.
"""

from __future__ import annotations

import pickle
from typing import Callable, Iterable, Iterator

from reasonrec.errors import ReasonrecError


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ReasonrecError("--engine ray needs Ray: pip install 'reasonrec[ray]'") from None
    return ray


class BackendSpec:
    """A picklable recipe for a backend, built once per actor: `get_backend(spec, **options)`."""

    def __init__(self, spec: str, **options):
        self.spec, self.options = spec, options

    def __call__(self):
        from reasonrec.llm import get_backend

        return get_backend(self.spec, **self.options)


class _Generate:
    """The actor: one backend, one batch of prompt groups per row."""

    def __init__(self, make_backend: Callable):
        self.backend = make_backend()

    def __call__(self, rows: dict) -> dict:
        results = []
        for request in rows["request"]:
            groups, params = pickle.loads(request)
            try:
                outcome = self.backend.generate_groups(groups, params)
            except Exception as err:  # the driver decides: stop the run, or count the batch as failed
                outcome = err
            results.append(pickle.dumps(outcome))
        return {"index": rows["index"], "results": results}


class RayEngine:
    """`actors` copies of the backend (each with `cpus_per_actor` CPUs) work through the batches.

    address: a running Ray cluster ("auto", "ray://..."); None starts a local one if none is up."""

    def __init__(self, make_backend: Callable, actors: int = 2, cpus_per_actor: float = 1,
                 address: str | None = None):
        self.make_backend, self.actors, self.cpus_per_actor, self.address = make_backend, actors, cpus_per_actor, address

    def generate(self, requests: Iterable[tuple]) -> Iterator[tuple[int, object]]:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        items = [{"index": i, "request": pickle.dumps(r)} for i, r in enumerate(requests)]
        if not items:
            return
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        out = dataset.map_batches(_Generate, fn_constructor_args=(self.make_backend,), batch_size=1,
                                  concurrency=self.actors, num_cpus=self.cpus_per_actor)
        for row in out.iter_rows():
            yield int(row["index"]), pickle.loads(row["results"])
