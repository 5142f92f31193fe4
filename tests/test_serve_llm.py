"""Integration (slow): the serving worker with a REAL LLM backend (`reasonrec.llm.get_backend`,
default `embedded` = SmolLM2-135M on CPU; override with REASONREC_SERVE_TEST_LLM). An event
queues the user's top-1 candidate; the worker thread writes its item profiles and contrastive
explanations with the model, and the next /v1/score serves them. Skipped while the backend
registry is not there."""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient

from tests.test_serve_support import bundle_ids

pytestmark = pytest.mark.slow


def test_worker_with_a_real_llm(bundle, tmp_path):
    llm = pytest.importorskip("reasonrec.llm")
    if not hasattr(llm, "get_backend"):
        pytest.skip("reasonrec.llm.get_backend is not available yet")
    from reasonrec.serve.app import create_app

    spec = os.environ.get("REASONREC_SERVE_TEST_LLM", "embedded")
    users, items = bundle_ids(bundle)
    app = create_app(bundle, tmp_path / "store.sqlite", spec, top_n=1, batch_size=1)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["worker"] == "running"
        r = c.post("/v1/events", json={"user_id": users[0], "item_id": items[-1]})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            info = c.get(f"/v1/users/{users[0]}").json()
            if info["explanations_ready"] == 1:
                break
            time.sleep(0.5)
        assert info["explanations_ready"] == 1, info
        got = c.post("/v1/score", json={"user_id": users[0], "item_ids": info["explained_items"]}).json()["items"][0]
        assert got["reasons"] == "ready" and got["reasons_source"] == "current"
        assert got["explanations"]["positive"].startswith("The consumer watched this movie because")
        assert got["explanations"]["negative"].startswith("The consumer did not watch this movie because")
        assert len(got["explanations"]["positive"].split()) > 8
        metrics = c.get("/metrics").text
        assert "reasonrec_worker_generated_total" in metrics
