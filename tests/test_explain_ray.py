"""`reasonrec explain --engine ray`: Ray Data over the prompt batches, LLM backends in an actor pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.explain.generate import ExplainConfig, Explainer
from reasonrec.explain.store import ExplanationStore
from reasonrec.explain.templates import load_templates
from reasonrec.llm.base import ModelIdOnly
from reasonrec.errors import BackendUnavailable
from tests.fakes import DiesOnce, FakeLLM, GoesAway

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    root = Path(__file__).resolve().parents[1]
    # actors import reasonrec and the test fakes by name
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{root / 'src'}:{root}"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return prepare(read("ml-100k"), PrepareConfig(max_users=10, last_n_per_user=10))


def rows(store: ExplanationStore):
    # every column but the write time
    return store.frame().drop(columns="created").sort_values("key").reset_index(drop=True)


def test_an_actor_killed_mid_run_leaves_the_store_of_one_process(local_ray, data, tmp_path):
    from reasonrec.explain.ray_engine import RayEngine

    cfg = ExplainConfig(batch_size=8)
    one = ExplanationStore(tmp_path / "one.sqlite")
    Explainer(FakeLLM(), one, load_templates("movie"), cfg).run(data.samples, data.items, progress=False)

    marker = tmp_path / "died"
    on_ray = ExplanationStore(tmp_path / "ray.sqlite")
    engine = RayEngine(DiesOnce(marker, after=2), actors=2)
    explainer = Explainer(ModelIdOnly("fake-llm"), on_ray, load_templates("movie"), cfg, engine=engine)
    explainer.run(data.samples, data.items, progress=False)
    assert marker.exists(), "an actor should have died mid-run"

    again = explainer.run(data.samples, data.items, progress=False)
    assert all(s.generated == 0 and s.cached == s.requested for s in again), "a rerun must find everything stored"
    assert len(rows(one)) > 100
    assert rows(on_ray).equals(rows(one))



def test_a_server_lost_in_an_actor_stops_the_run_and_keeps_its_answers(local_ray, data, tmp_path):
    """As in one process: BackendUnavailable stops the run, and what the server answered before
    it went away (`partial`, carried back from the actor) is stored."""
    from reasonrec.explain.ray_engine import RayEngine

    store = ExplanationStore(tmp_path / "ray.sqlite")
    explainer = Explainer(ModelIdOnly("fake-llm"), store, load_templates("movie"),
                          ExplainConfig(profiles=False, batch_size=8), engine=RayEngine(GoesAway(answered=3), actors=1))
    with pytest.raises(BackendUnavailable, match="connection refused"):
        explainer.run(data.samples, data.items, progress=False)
    assert store.count() == 3

@pytest.mark.slow
def test_embedded_model_on_two_actors_one_killed_matches_one_greedy_process(local_ray, tmp_path):
    """~100 samples, the embedded model: one actor dies mid-run, the run goes on, a rerun makes
    nothing, and the store holds what one process writes (greedy decoding, the same batches)."""
    from reasonrec.explain.ray_engine import BackendSpec, RayEngine
    from reasonrec.llm import get_backend, model_id_of

    data = prepare(read("ml-100k"), PrepareConfig(max_users=10, last_n_per_user=10))
    cfg = ExplainConfig(profiles=False, batch_size=8)
    one = ExplanationStore(tmp_path / "one.sqlite")
    Explainer(get_backend("embedded", threads=1), one, load_templates("movie"), cfg).run(
        data.samples, data.items, progress=False)

    marker = tmp_path / "died"
    on_ray = ExplanationStore(tmp_path / "ray.sqlite")
    engine = RayEngine(DiesOnce(marker, after=3, make=BackendSpec("embedded", threads=1)), actors=2)
    explainer = Explainer(ModelIdOnly(model_id_of("embedded")), on_ray, load_templates("movie"), cfg, engine=engine)
    explainer.run(data.samples, data.items, progress=False)
    assert marker.exists(), "an actor should have died mid-run"
    again = explainer.run(data.samples, data.items, progress=False)
    assert all(s.generated == 0 for s in again)
    assert len(rows(one)) == 2 * len(data.samples)
    assert rows(on_ray).equals(rows(one))
