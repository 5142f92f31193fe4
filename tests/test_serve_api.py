"""The serving API against a REAL server (uvicorn subprocess on 127.0.0.1) over a small fitted
bundle: every endpoint, cold users/items, bad input (4xx with a message, never 5xx), the event ->
worker -> explanation loop (with the FAKE LLM), precompute, and the traced scorer."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.fakes import FakeLLM
from tests.test_serve_support import FAKE_SPEC, Server, bundle_ids

NAMES = {"user", "item", "seq", "context"}   # the default (residual) fusion: reasons ride on the item token


@pytest.fixture(scope="module")
def ids(bundle):
    users, items = bundle_ids(bundle)
    texts = pd.read_parquet(bundle / "texts.parquet")
    seen = texts.groupby("user_id")["item_id"].apply(set).to_dict()
    return {"users": users, "items": items, "seen": seen}


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    store = tmp_path_factory.mktemp("api") / "store.sqlite"
    with Server(bundle, store, "--llm", f"{FAKE_SPEC}?delay=0", "--top-n", "4", "--batch-size", "4") as srv:
        yield srv


def test_healthz_and_openapi(server):
    h = server.client.get("/healthz").json()
    assert h["status"] == "ok" and h["worker"] == "running" and h["llm"] == "fake-llm" and h["users"] > 0
    spec = server.client.get("/openapi.json").json()
    paths = {"/v1/score", "/v1/recommend", "/v1/events", "/v1/users/{user_id}", "/healthz", "/metrics"}
    assert paths <= set(spec["paths"])
    item_ids = spec["components"]["schemas"]["ScoreRequest"]["properties"]["item_ids"]
    assert item_ids["maxItems"] == 1000 and item_ids["minItems"] == 1


def test_score_known_user(server, ids):
    user = ids["users"][0]
    seen = sorted(ids["seen"][user] & set(ids["items"]))[:3]          # logged and known to the model
    cands = seen + [i for i in ids["items"] if i not in ids["seen"][user]][:97]
    r = server.client.post("/v1/score", json={"user_id": user, "item_ids": cands})
    assert r.status_code == 200, r.text
    assert "app;dur=" in r.headers["server-timing"]
    body = r.json()
    assert body["known_user"] is True and body["task"] == "classification" and len(body["history"]) == 5
    items = body["items"]
    assert [x["item_id"] for x in items] == cands
    for x in items:
        assert 0.0 <= x["score"] <= 1.0 and x["known_item"] and x["in_catalog"]
        assert set(x["attention"]) == NAMES and math.isclose(sum(x["attention"].values()), 1.0, abs_tol=2e-3)
    # the logged interactions come with the explanations recorded for them
    for x in items[:3]:
        assert x["reasons"] == "ready" and x["reasons_source"] == "interaction"
        assert x["explanations"]["positive"].startswith("the consumer likes")
        assert x["explanations"]["negative"].startswith("the consumer dislikes")
    assert all(x["reasons"] in ("unavailable", "pending", "ready") for x in items[3:])
    lean = server.client.post("/v1/score", json={"user_id": user, "item_ids": seen, "explanations": False,
                                                  "attention": False}).json()
    assert all(x["explanations"] is None and x["attention"] is None and x["reasons"] == "ready" for x in lean["items"])
    assert [x["score"] for x in lean["items"]] == [x["score"] for x in items[:3]]


def test_cold_user_and_cold_items(server, ids):
    cands = [ids["items"][0], "no-such-item"]
    r = server.client.post("/v1/score", json={"user_id": "nobody-knows-me", "item_ids": cands})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known_user"] is False and body["history"] == []
    known, cold = body["items"]
    assert known["known_item"] and known["in_catalog"]
    assert cold["known_item"] is False and cold["in_catalog"] is False and cold["reasons"] == "unavailable"
    assert 0 <= cold["score"] <= 1 and set(cold["attention"]) == NAMES


def test_recommend(server, ids):
    user = ids["users"][1]
    r = server.client.post("/v1/recommend", json={"user_id": user, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    scores = [x["score"] for x in body["items"]]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)
    assert not {x["item_id"] for x in body["items"]} & ids["seen"][user], "default pool excludes seen items"
    assert body["pool_size"] == len(ids["items"]) - len(ids["seen"][user] & set(ids["items"]))
    pool = sorted(ids["seen"][user])[:2] + ids["items"][:5]
    r = server.client.post("/v1/recommend", json={"user_id": user, "k": 50, "item_ids": pool, "exclude_seen": False})
    got = r.json()
    assert got["pool_size"] == len(set(pool)) and len(got["items"]) == len(set(pool))
    r = server.client.post("/v1/recommend", json={"user_id": user, "item_ids": sorted(ids["seen"][user])[:2]})
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["pool_size"] == 0
    cold = server.client.post("/v1/recommend", json={"user_id": "cold-start", "k": 3}).json()
    assert cold["known_user"] is False and len(cold["items"]) == 3


BAD = [
    ("POST", "/v1/score", {"user_id": 42, "item_ids": ["1"]}, 422, "user_id: Input should be a valid string"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": []}, 422, "item_ids: List should have at least 1 item"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"] * 1001}, 422, "item_ids: List should have at most 1000"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["x" * 129]}, 422, "at most 128 characters"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": [1, 2]}, 422, "valid string"),
    ("POST", "/v1/score", {"user_id": "1"}, 422, "item_ids: Field required"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"], "bogus": 1}, 422, "Extra inputs are not permitted"),
    ("POST", "/v1/score", {"user_id": "a\nb", "item_ids": ["1"]}, 422, "should match pattern"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"], "timestamp": -5}, 422, "timestamp"),
    ("POST", "/v1/score", "not json", 422, "JSON decode error"),
    ("POST", "/v1/score", ["a", "list"], 422, "invalid request"),
    ("POST", "/v1/recommend", {"user_id": "1", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("POST", "/v1/recommend", {"user_id": "1", "k": 1001}, 422, "k: Input should be less than or equal to 1000"),
    ("POST", "/v1/events", {"user_id": "1", "item_id": "no-such-item"}, 404, "unknown item_id 'no-such-item'"),
    ("POST", "/v1/events", {"user_id": "1", "item_id": "1", "label": 2}, 422, "label"),
    ("POST", "/v1/events", {"user_id": "1"}, 422, "item_id: Field required"),
    # strict types: nothing is coerced
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"], "attention": 0}, 422, "attention: Input should be a valid boolean"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"], "explanations": "yes"}, 422, "explanations: Input should be a valid boolean"),
    ("POST", "/v1/recommend", {"user_id": "1", "k": "10"}, 422, "k: Input should be a valid integer"),
    ("POST", "/v1/events", {"user_id": "1", "item_id": "1", "label": True}, 422, "label: Input should be a valid integer"),
    # context: the bundle's fields and ranges, as the OpenAPI document says
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"], "context": {"ctx_hour": 24}}, 422, "context.ctx_hour: Input should be less than or equal to 23"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": ["1"], "context": {"bogus": 1}}, 422, "context.bogus: Extra inputs are not permitted"),
    ("GET", "/v1/users/no-such-user", None, 404, "unknown user_id 'no-such-user'"),
    ("GET", "/v1/score", None, 405, "Method Not Allowed"),
    ("GET", "/v1/nothing-here", None, 404, "Not Found"),
]


@pytest.mark.parametrize("method, path, body, status, message", BAD,
                         ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_4xx_with_a_message(server, method, path, body, status, message):
    if isinstance(body, str):
        r = server.client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        r = server.client.request(method, path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err, err
    assert "Traceback" not in r.text


def test_content_type_and_encoding(server, ids):
    body = {"user_id": ids["users"][0], "item_ids": ids["items"][:2]}
    import json as _json

    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": ctype} if ctype else {}
        r = server.client.post("/v1/score", content=_json.dumps(body), headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["error"], (ctype, r.text)
    r = server.client.post("/v1/score", content=_json.dumps(body), headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text
    r = server.client.post("/v1/events", content=b'{"user_id": "\xff\xfe", "item_id": "1"}',
                           headers={"content-type": "application/json"})
    assert r.status_code == 400 and "UTF-8" in r.json()["error"], r.text
    # both are in the OpenAPI document, with the context fields the bundle has
    spec = server.client.get("/openapi.json").json()
    for path in ("/v1/score", "/v1/recommend", "/v1/events"):
        assert {"400", "415", "422"} <= set(spec["paths"][path]["post"]["responses"]), path
    assert "503" in spec["paths"]["/v1/events"]["post"]["responses"]
    context = spec["components"]["schemas"]["Context"]
    assert set(context["properties"]) == {"ctx_hour", "ctx_weekday"} and context["additionalProperties"] is False
    good = server.client.post("/v1/score", json={**body, "context": {"ctx_hour": 23, "ctx_weekday": 0}})
    assert good.status_code == 200, good.text


def test_limits_on_body_size_and_raw_nan(server):
    big = b'{"user_id": "1", "item_ids": ["' + b"x" * (2 << 20) + b'"]}'
    r = server.client.post("/v1/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = server.client.post("/v1/events", content=b'{"user_id": "1", "item_id": "1", "rating": NaN}',
                           headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text


def test_event_refreshes_explanations_in_the_background(server, ids):
    user = ids["users"][2]
    item = next(i for i in ids["items"] if i not in ids["seen"][user])
    before = server.client.get(f"/v1/users/{user}").json()
    r = server.client.post("/v1/events", json={"user_id": user, "item_id": item, "rating": 5, "label": 1})
    assert r.status_code == 200, r.text
    ev = r.json()
    assert ev["queued"] and ev["history"] == (before["history"] + [item])[-5:] and ev["event_id"] >= 1

    def explained():
        u = server.client.get(f"/v1/users/{user}").json()
        return u if u["explanations_ready"] >= 4 and u["explanations_pending"] == 0 else None

    info = server.wait_for(explained, timeout=60, what="the worker explaining the top-4")
    assert info["interactions"] == before["interactions"] + 1
    cands = info["explained_items"] + [item]
    scored = server.client.post("/v1/score", json={"user_id": user, "item_ids": cands}).json()
    ready = scored["items"][:-1]
    assert all(x["reasons"] == "ready" and x["reasons_source"] == "current" for x in ready)
    assert all(x["explanations"]["positive"].startswith("The consumer watched this movie because") for x in ready)
    assert all(x["explanations"]["negative"].startswith("The consumer did not watch this movie because") for x in ready)
    only = server.client.post("/v1/recommend", json={"user_id": user, "k": 3, "require_reasons": True}).json()
    assert only["pool_size"] == len(info["explained_items"]) and len(only["items"]) == 3
    assert all(x["reasons"] == "ready" for x in only["items"])
    # the item just consumed is out of the default pool now
    rec = server.client.post("/v1/recommend", json={"user_id": user, "k": 1000}).json()
    assert item not in {x["item_id"] for x in rec["items"]}
    assert server.metric("reasonrec_worker_generated_total") >= 8
    assert server.metric("reasonrec_events_total") >= 1


def test_new_user_events(server, ids):
    r = server.client.post("/v1/events", json={"user_id": "brand-new", "item_id": ids["items"][3]})
    assert r.status_code == 200 and r.json()["known_user"] is False and r.json()["history"] == [ids["items"][3]]
    u = server.client.get("/v1/users/brand-new").json()
    assert u["history"] == [ids["items"][3]] and u["interactions"] == 1
    s = server.client.post("/v1/score", json={"user_id": "brand-new", "item_ids": ids["items"][:2]}).json()
    assert s["history"] == [ids["items"][3]]


def test_metrics(server, ids):
    server.client.post("/v1/score", json={"user_id": ids["users"][0], "item_ids": ids["items"][:10]})
    text = server.client.get("/metrics").text
    for needle in ('reasonrec_request_duration_seconds_bucket{endpoint="/v1/score",le="0.005"}',
                   'reasonrec_request_duration_seconds_count{endpoint="/v1/recommend"}',
                   "reasonrec_queue_depth ", "reasonrec_explanation_cache_hits_total",
                   "reasonrec_explanation_cache_misses_total", "reasonrec_worker_generated_total",
                   "reasonrec_worker_failed_total", 'reasonrec_responses_total{endpoint="/v1/score",status="422"}'):
        assert needle in text, needle
    assert server.metric("reasonrec_explanation_cache_misses_total") > 0


# --- in-process pieces --------------------------------------------------------------------------

def test_precompute_is_resumable_and_served_after_restart(bundle, ids, tmp_path):
    from reasonrec.serve import create_app, precompute

    users = ids["users"][:2]
    llm = FakeLLM()
    first = precompute(bundle, tmp_path / "s.sqlite", llm, users=users, top_n=3, batch_size=2, progress=False)
    assert first["pairs_queued"] == 6 and first["jobs_done"] == 6 and first["drained"] and first["generated"] > 12
    sent = len(llm.prompts)
    again = precompute(bundle, tmp_path / "s.sqlite", llm, users=users, top_n=3, progress=False)
    assert again["pairs_queued"] == 0 and again["generated"] == 0 and len(llm.prompts) == sent
    with pytest.raises(Exception, match="unknown user"):
        precompute(bundle, tmp_path / "s.sqlite", llm, users=["nope"], progress=False)
    app = create_app(bundle, tmp_path / "s.sqlite")                     # no LLM: serving only
    with TestClient(app) as c:
        info = c.get(f"/v1/users/{users[0]}").json()
        assert info["explanations_ready"] == 3
        got = c.post("/v1/score", json={"user_id": users[0], "item_ids": info["explained_items"]}).json()
        assert all(x["reasons"] == "ready" and x["reasons_source"] == "current" for x in got["items"])
        assert c.get("/healthz").json()["worker"] == "disabled"


def test_traced_scorer_matches_eager(bundle, ids, tmp_path):
    from reasonrec.serve.app import create_app

    app = create_app(bundle, tmp_path / "s.sqlite", jit=True, split=False)      # the trace serves other models
    index = app.state.index
    assert index._traced is not None
    user, cands = ids["users"][3], ids["items"][:64] + ["cold-one"]
    rows = index.rows_of(cands)
    fast = index.score_rows(user, rows, cands)
    slow = index.score_rows(user, rows, cands, model=index.worker_model())
    assert abs(fast.scores - slow.scores).max() < 1e-5
    assert abs(fast.shares - slow.shares).max() < 1e-5


def test_split_scorer_gives_the_answers_of_the_full_forward(bundle, ids, tmp_path):
    """/v1/recommend and /v1/score with the user-side half computed once per request (split.py)
    answer what the full forward answers: same items in the same order, same scores and attention
    (up to float rounding), for users with explanations, cold users, a user whose history just
    changed, and explicit context."""
    from reasonrec.serve.app import create_app

    app = create_app(bundle, tmp_path / "s.sqlite", jit=False)
    index = app.state.index
    assert index._split is not None, "LR-Recsys is served by the split scorer"
    split = index._split
    users = ids["users"][:6] + ["cold-one"]

    def answers(c, on: bool):
        index._split = split if on else None
        out = []
        for n, user in enumerate(users):
            ctx = {"context": {"ctx_hour": n % 24, "ctx_weekday": n % 7}} if n % 2 else {"timestamp": 1_700_000_000}
            out.append(c.post("/v1/recommend", json={"user_id": user, "k": 50, **ctx}).json())
            out.append(c.post("/v1/score", json={"user_id": user, "item_ids": ids["items"][:40] + ["nope"], **ctx}).json())
        return out

    with TestClient(app) as c:
        for round_ in range(2):
            fast, full = answers(c, True), answers(c, False)
            for a, b in zip(fast, full):
                sa, sb = [x["score"] for x in a["items"]], [x["score"] for x in b["items"]]
                assert len(sa) == len(sb) > 0 and max(abs(x - y) for x, y in zip(sa, sb)) <= 2e-6
                # same order, except that items tied to within float rounding may swap
                for x, y, score in zip(a["items"], b["items"], sb):
                    assert x["item_id"] == y["item_id"] or abs(x["score"] - y["score"]) <= 2e-6, (x, y)
                    assert x["reasons"] == y["reasons"] and x["explanations"] == y["explanations"]
                    if x["item_id"] == y["item_id"]:
                        assert all(abs(x["attention"][k] - y["attention"][k]) <= 2e-4 for k in x["attention"])
            # a new event changes the user's history: the cached user-side half must follow it
            item = next(i for i in ids["items"] if i not in ids["seen"][users[0]])
            assert c.post("/v1/events", json={"user_id": users[0], "item_id": item}).status_code == 200
    index._split = split


def test_unexpected_errors_are_a_generic_500(bundle, ids, tmp_path, caplog):
    from reasonrec.serve.app import create_app

    app = create_app(bundle, tmp_path / "s.sqlite", jit=False)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    app.state.index.score_rows = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/score", json={"user_id": ids["users"][0], "item_ids": ids["items"][:3]})
        assert r.status_code == 500
        assert r.json() == {"error": "internal error; see the server log"}
        assert "secret" not in r.text and "Traceback" not in r.text
        assert 'status="500"' in c.get("/metrics").text
    assert "secret internal detail" in caplog.text            # ...but it is logged server-side


def test_worker_retries_backend_errors_then_fails_and_skips_superseded(bundle, ids, tmp_path):
    from reasonrec.estimator import Recommender
    from reasonrec.explain.store import ExplanationStore
    from reasonrec.explain.templates import load_templates
    from reasonrec.serve.events import StateDB
    from reasonrec.serve.index import ServingIndex
    from reasonrec.serve.worker import Worker

    rec = Recommender.load(bundle)
    state, store = StateDB(tmp_path / "state.sqlite"), ExplanationStore(tmp_path / "s.sqlite")
    index = ServingIndex(rec, state, store)
    broken = FakeLLM(fail_every=1)                      # every generation is a backend error
    worker = Worker(index, state, store, broken, load_templates("movie"), top_n=2, batch_size=4,
                    max_attempts=2, profiles=False)
    a, b = ids["users"][:2]
    state.enqueue_pairs(a, index.history[a], ids["items"][:2])
    index.mark_pending(a, index.sig[a], ids["items"][:2])
    old_b = list(index.history[b])
    state.enqueue_pairs(b, old_b, ids["items"][:1])
    item = ids["items"][5]
    state.append_event(b, item, None, None, 0, index.next_history(b, item))
    index.apply_event(b, item)                          # b's queued pair is stale now
    assert worker.drain(max_seconds=30)
    jobs = state.job_counts()
    # a's 2 pairs and the 2 queued by b's refresh: retried once, then failed; b's stale pair superseded
    assert jobs == {"pair:failed": 4, "pair:superseded": 1, "refresh:done": 1}, jobs
    assert store.count() == 0 and worker.stats.jobs_retried == 4 and worker.stats.jobs_failed == 4
    assert not index.pending.get(a), "failed pairs are no longer advertised as pending"
