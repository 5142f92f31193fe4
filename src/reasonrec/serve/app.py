"""The HTTP service: `create_app(bundle_dir, store_path, llm=...)` and `serve(...)` (uvicorn).

  POST /v1/score       user + candidates -> scores, explanation texts, attention shares
  POST /v1/recommend   user (+ pool, k) -> top-k with reasons
  POST /v1/events      a new interaction: durable log, new history, explanation refresh queued
  GET  /v1/users/{id}  a user's current history and explanation counts
  GET  /healthz, /metrics (Prometheus), /openapi.json, /docs

The request path never waits on the LLM: it reads the in-memory index (see `index.py`); pairs
without a written explanation are answered at once, flagged `pending` (queued) or `unavailable`.
The worker thread (see `worker.py`) fills the store in the background and swaps new explanation
vectors into the index. Errors: 4xx with a message for bad input, 503 when a database cannot be
written (read-only past the retry budget, or deleted/replaced under the server: see
`storage.py`; the write is refused, never acknowledged and lost), a generic 500 (details logged
here, never sent) for anything unexpected. /healthz says `degraded`, with the reasons, while a
database or the worker is in trouble.

In front of the app: header-size and read/idle-timeout limits in the HTTP protocol
(`protocol.py`), then `ServingMiddleware`: optional API keys (REASONREC_API_KEYS) and per-client
rate limit, 415 for non-JSON bodies, 413 for oversized ones. `serve(..., processes=N)` runs N
server processes and the worker in its own (`multi.py`).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from reasonrec.errors import ReasonrecError
from reasonrec.serve import schemas as S
from reasonrec.serve.index import ServingIndex
from reasonrec.serve.storage import StorageUnavailable, open_serving_files

log = logging.getLogger("reasonrec.serve")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DEFAULT_STORE = Path("artifacts/store/explanations.sqlite")     # the one `reasonrec explain` writes
ENDPOINTS = ("/v1/score", "/v1/recommend", "/v1/events", "/healthz", "/metrics", "/openapi.json", "/docs")


def default_state_path(store_path: str | Path) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".serve.sqlite")


try:                                   # 10-20x faster than json for the 20-40 KB score responses
    import orjson

    def _dumps(content) -> bytes:
        return orjson.dumps(content)
except ImportError:                    # pragma: no cover - orjson is in the serve extra
    def _dumps(content) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class FastJSON(JSONResponse):
    def render(self, content) -> bytes:
        return _dumps(content)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.latency = Histogram("reasonrec_request_duration_seconds", "Request latency inside the server",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.responses = Counter("reasonrec_responses", "Responses by endpoint and status", ["endpoint", "status"],
                                 registry=r)
        self.hits = Counter("reasonrec_explanation_cache_hits", "Scored pairs answered with an explanation",
                            registry=r)
        self.misses = Counter("reasonrec_explanation_cache_misses", "Scored pairs answered without one",
                              registry=r)
        self.queue = Gauge("reasonrec_queue_depth", "Explanation jobs pending", registry=r)
        self.generated = Counter("reasonrec_worker_generated", "Rows the worker wrote to the store", registry=r)
        self.failed = Counter("reasonrec_worker_failed", "Generations that failed (backend error or clean-up)",
                              registry=r)
        self.jobs = Counter("reasonrec_worker_jobs", "Jobs finished by the worker", ["outcome"], registry=r)
        self.events = Counter("reasonrec_events", "Interactions logged", registry=r)

    def worker_listener(self, name: str, n: int):
        if name == "generated":
            self.generated.inc(n)
        elif name == "failed":
            self.failed.inc(n)
        elif name.startswith("jobs_"):
            self.jobs.labels(name[5:]).inc(n)


class Gate:
    """Optional API keys and per-client rate limit, checked before any work is done.

    keys: accepted API keys (sent as `x-api-key: KEY` or `authorization: Bearer KEY`); None = open.
    rate: requests per second per client (the API key when keys are on, else the client address),
    a token bucket holding up to `burst` requests; None = unlimited. /healthz, /metrics and the
    OpenAPI pages stay open: probes and scrapers carry no keys."""

    OPEN = ("/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")

    def __init__(self, keys=None, rate: float | None = None, burst: float | None = None):
        self.keys = [k.encode() for k in keys] if keys else None
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else (rate or 1.0))
        self.buckets: dict = {}

    def check(self, scope) -> tuple[int, str, list] | None:
        """None to let the request through, else (status, message, extra headers)."""
        if scope["path"] in self.OPEN:
            return None
        client = None
        if self.keys is not None:
            key = _presented_key(scope)
            # compare with every key, always: the time taken says nothing about which one matched
            ok = False
            for k in self.keys:
                ok |= key is not None and hmac.compare_digest(key, k)
            if not ok:
                return 401, "missing or unknown API key (send x-api-key: KEY)", [(b"www-authenticate", b"Bearer")]
            client = key
        if self.rate:
            client = client or (scope.get("client") or ("?",))[0]
            now = time.monotonic()
            tokens, last = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self.buckets[client] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                return 429, f"rate limit of {self.rate:g} requests/s exceeded", [(b"retry-after", str(wait).encode())]
            if len(self.buckets) > 100_000:              # bounded memory whatever the clients do
                self.buckets.clear()
            self.buckets[client] = (tokens - 1.0, now)
        return None


def _presented_key(scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


class ServingMiddleware:
    """Plain ASGI (no per-request task): times every request into the histogram, adds a
    `server-timing` header, applies the gate (API keys, rate limit), and refuses bodies that are
    not JSON (415) or over the limit (413, whether announced by Content-Length or found while a
    chunked body streams in)."""

    def __init__(self, app, metrics: Metrics, max_body: int = S.MAX_BODY_BYTES, gate: Gate | None = None):
        self.app, self.metrics, self.max_body, self.gate = app, metrics, max_body, gate

    @staticmethod
    def endpoint(path: str) -> str:
        if path in ENDPOINTS:
            return path
        if path.startswith("/v1/users/"):
            return "/v1/users/{user_id}"
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        try:
            await self._handle(scope, receive, send, started, status)
        finally:
            endpoint = self.endpoint(scope["path"])
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.responses.labels(endpoint, str(status[0])).inc()

    async def _handle(self, scope, receive, send, started, status):
        refusal = self.gate.check(scope) if self.gate is not None else None
        if refusal is None and scope["method"] == "POST" and scope["path"] in JSON_BODY_PATHS:
            if not _is_json(scope):
                refusal = 415, "the body must be JSON: send it with content-type: application/json", []
            elif _content_length(scope) > self.max_body:
                refusal = 413, self._too_large_message, []
        if refusal is not None:
            status[0] = refusal[0]
            return await _refuse(send, *refusal)
        seen = [0]
        refused = [False]
        started_response = [False]

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body:
                    # answer 413 now and tell the app the client left, so it stops reading;
                    # whatever it tries to send afterwards is dropped
                    if not started_response[0] and not refused[0]:
                        refused[0], status[0] = True, 413
                        await _refuse(send, 413, self._too_large_message, [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return message

        async def timed_send(message):
            if refused[0]:
                return
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started_response[0] = True
                took = (time.perf_counter() - started) * 1000
                message["headers"] = list(message.get("headers", [])) + [
                    (b"server-timing", f"app;dur={took:.3f}".encode())]
            await send(message)

        await self.app(scope, limited_receive, timed_send)

    @property
    def _too_large_message(self) -> str:
        return f"request body larger than {self.max_body} bytes"


async def _refuse(send, status: int, message: str, headers=()):
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


API_KEYS_ENV = "REASONREC_API_KEYS"
WORKER_HEARTBEAT_STALE = 30.0      # seconds without a beat from the worker process before health degrades


def _heartbeat(state) -> float | None:
    try:
        beat = state.guard(lambda con: con.execute("SELECT value FROM meta WHERE key='worker_heartbeat'").fetchone())
    except StorageUnavailable:
        return None
    return float(beat[0]) if beat else None


def _document_gate(app: FastAPI, keys: bool, rate: float | None):
    """The OpenAPI document says what the gate does: 401 and the key schemes, 429."""
    if not keys and not rate:
        return
    build = app.openapi

    def openapi():
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        if keys:
            spec.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "Bearer": {"type": "http", "scheme": "bearer"}}
        for path, ops in spec["paths"].items():
            if path in Gate.OPEN:
                continue
            for op in ops.values():
                if keys:
                    op["security"] = [{"ApiKey": []}, {"Bearer": []}]
                    op["responses"]["401"] = {"description": "missing or unknown API key", "content": error}
                if rate:
                    op["responses"]["429"] = {"description": f"over {rate:g} requests/s for this client; "
                                                             "see retry-after", "content": error}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi


def _is_json(scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return False


def _bundle_domain(bundle_dir: Path) -> str | None:
    try:
        meta = json.loads((bundle_dir / "bundle.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("domain") or meta.get("config", {}).get("domain")


ERRORS = {404: {"model": S.ErrorBody}, 413: {"model": S.ErrorBody}, 422: {"model": S.ErrorBody},
          500: {"model": S.ErrorBody}}
POST_ERRORS = {**ERRORS, 400: {"model": S.ErrorBody, "description": "the body is not UTF-8"},
               415: {"model": S.ErrorBody, "description": "the body is not application/json"}}
WRITE_ERRORS = {**POST_ERRORS,
                503: {"model": S.ErrorBody, "description": "a database cannot be written; retry later"}}
JSON_BODY_PATHS = frozenset({"/v1/score", "/v1/recommend", "/v1/events"})

# what Recommender.save writes; checked up front so a damaged bundle is named file by file
BUNDLE_FILES = ("bundle.json", "features.json", "model.pt", "texts.parquet", "items.parquet", "users.parquet",
                "user_history.json")


def load_bundle(bundle_dir: Path):
    """reasonrec.load with errors that name the bundle file at fault."""
    from reasonrec.estimator import Recommender

    _probe_bundle(bundle_dir)
    try:
        return Recommender.load(bundle_dir)
    except ReasonrecError:
        raise
    except Exception as err:          # files that parse but do not fit together (state-dict mismatch, ...)
        raise ReasonrecError(f"bundle {bundle_dir}: cannot be loaded ({_first_line(err)})") from None


def _probe_bundle(bundle_dir: Path):
    """Every bundle file present, non-empty and parseable, or an error naming the one that is not."""
    if not bundle_dir.is_dir():
        raise ReasonrecError(f"bundle {bundle_dir}: no such directory")
    missing = [f for f in BUNDLE_FILES if not (bundle_dir / f).is_file()]
    if missing:
        raise ReasonrecError(f"bundle {bundle_dir}: missing {', '.join(missing)} (a bundle is what "
                             f"`reasonrec train` or Recommender.save writes)")
    empty = [f for f in BUNDLE_FILES if (bundle_dir / f).stat().st_size == 0]
    if empty:
        raise ReasonrecError(f"bundle {bundle_dir}: empty file(s) {', '.join(empty)} (an interrupted copy?)")
    for name in BUNDLE_FILES:
        try:
            _probe(bundle_dir / name)
        except Exception as err:
            raise ReasonrecError(f"bundle {bundle_dir}: {name} is damaged ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _probe(path: Path):
    """Parse one bundle file the cheap way its loader would, so an error can name it."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.read_metadata(path)
    elif path.suffix == ".pt":
        torch.load(path, weights_only=True, map_location="cpu")


def create_app(bundle_dir: str | Path, store_path: str | Path, llm=None, *, state_path: str | Path | None = None,
               domain: str | None = None, top_n: int = 20, batch_size: int = 8, profiles: bool = True,
               interaction_reasons: bool = True, start_worker: bool = True, torch_threads: int | None = 1,
               max_attempts: int = 3, jit: bool = True, retry_failed_after: float | None = 300.0,
               split: bool = True, api_keys: list[str] | None = None, rate_limit: float | None = None,
               rate_burst: float | None = None, follow: bool = False, worker_elsewhere: bool = False) -> FastAPI:
    """The service over a model bundle and an explanation store.

    llm: None (no worker: explanations come only from what is already in the store / bundle, events
    still queue their jobs durably), a backend object, or a spec string (`embedded`,
    `openai:MODEL@URL`, `py:module:factory?arg=1`, see `worker.resolve_llm`).
    api_keys: keys that /v1/* requires; default: the comma-separated API_KEYS_ENV variable, and
    no key required when it is unset or empty. rate_limit: requests/s per client (see `Gate`).
    follow: other processes write the same files (`multi.py`): tail them (`follow.Follower`).
    worker_elsewhere: the explanation worker runs in its own process (health reads its heartbeat)."""
    if torch_threads:
        torch.set_num_threads(torch_threads)
    bundle_dir = Path(bundle_dir)
    rec = load_bundle(bundle_dir)
    store, state = open_serving_files(Path(store_path), Path(state_path or default_state_path(store_path)))
    index = ServingIndex(rec, state, store, interaction_reasons=interaction_reasons)
    metrics = Metrics()

    def depth() -> float:
        try:
            return state.depth()
        except StorageUnavailable:
            return float("nan")

    metrics.queue.set_function(depth)

    worker = None
    backend = None
    if llm is not None:
        from reasonrec.explain.templates import load_templates
        from reasonrec.serve.worker import Worker, resolve_llm

        backend = resolve_llm(llm)
        if backend is not None and index.uses_text:
            dom = domain or _bundle_domain(bundle_dir) or "movie"
            worker = Worker(index, state, store, backend, load_templates(dom), top_n=top_n, batch_size=batch_size,
                            max_attempts=max_attempts, profiles=profiles, retry_failed_after=retry_failed_after)
            worker.stats.listeners.append(metrics.worker_listener)

    if not (split and index.enable_split()) and jit:
        index.trace()
    _warm_up(index)
    follower = None
    if follow:
        from reasonrec.serve.follow import Follower

        follower = Follower(index, state, store)

    @asynccontextmanager
    async def lifespan(app):
        if worker is not None and start_worker:
            worker.start()
        if follower is not None:
            follower.start()
        yield
        if follower is not None:
            follower.stop()
        if worker is not None:
            worker.stop(timeout=5)

    app = FastAPI(title="reasonrec", version="1", lifespan=lifespan,
                  description="Explainable recommendations: scores with precomputed LLM reasons.")
    app.state.index, app.state.state, app.state.store, app.state.worker = index, state, store, worker
    app.state.metrics = metrics
    if api_keys is None:
        api_keys = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if rate_limit is not None and rate_limit <= 0:
        raise ReasonrecError(f"rate limit must be positive, got {rate_limit}")
    gate = Gate(api_keys or None, rate_limit, rate_burst) if api_keys or rate_limit else None
    app.add_middleware(ServingMiddleware, metrics=metrics, gate=gate)
    _document_gate(app, bool(api_keys), rate_limit)
    _install_error_handlers(app)

    task = index.task
    names = index.input_names

    def items_payload(user: str, item_ids: list[str], scored, order, want_expl: bool, want_attn: bool) -> list[dict]:
        scores = scored.scores.round(6).tolist()
        rows = scored.rows.tolist()
        slots = scored.slots.tolist()
        shares = None
        if want_attn and scored.shares is not None:
            shares = scored.shares[order].astype(np.float64).round(4).tolist()
        ue = scored.expl
        pending = index.pending.get(user, ())
        unknown, codes = index.unknown_row, index.row_code
        out = []
        hits = 0
        for n, k in enumerate(order):
            row, slot = rows[k], slots[k]
            item = item_ids[k]
            entry = {"item_id": item, "score": scores[k], "known_item": bool(codes[row] > 1),
                     "in_catalog": row != unknown}
            if slot >= 0:
                hits += 1
                entry["reasons"] = "ready"
                entry["reasons_source"] = ue.sources[slot]
                entry["explanations"] = ue.texts[slot] if want_expl else None
            else:
                entry["reasons"] = "pending" if item in pending else "unavailable"
                entry["reasons_source"] = None
                entry["explanations"] = None
            entry["attention"] = dict(zip(names, shares[n])) if shares is not None else None
            out.append(entry)
        if index.uses_text:
            metrics.hits.inc(hits)
            metrics.misses.inc(len(out) - hits)
        return out

    ScoreRequest, RecommendRequest = S.request_models(index.spec.ctx_fields)

    def body_type(model):
        """Route bodies typed by this bundle's request models (annotations are strings under
        `from __future__ import annotations`, which FastAPI would look up in module globals)."""
        def bind(fn):
            fn.__annotations__["req"] = model
            return fn
        return bind

    def context_of(req) -> dict | None:
        return req.context.model_dump(exclude_none=True) if req.context is not None else None

    @app.post("/v1/score", response_model=S.ScoreResponse, responses=POST_ERRORS,
              summary="Score candidates for a user, with their precomputed reasons")
    @body_type(ScoreRequest)
    async def score(req):
        user = req.user_id
        rows = index.rows_of(req.item_ids)
        scored = index.score_rows(user, rows, req.item_ids, req.timestamp, context_of(req), req.attention)
        items = items_payload(user, req.item_ids, scored, range(len(rows)), req.explanations, req.attention)
        return FastJSON({"user_id": user, "known_user": index.known_user(user),
                             "history": index.history.get(user, []), "task": task, "items": items})

    @app.post("/v1/recommend", response_model=S.RecommendResponse, responses=POST_ERRORS,
              summary="Top-k items for a user, with their reasons")
    @body_type(RecommendRequest)
    async def recommend(req):
        user = req.user_id
        if req.item_ids is None and not req.require_reasons:
            rows = index.default_pool(user, req.exclude_seen)
            ids = None
        else:
            if req.require_reasons:
                ue = index.expl.get(user)
                ids = [i for i, k in ue.slots.items() if ue.sources[k] == "current"] if ue else []
                if req.item_ids is not None:
                    allowed = set(req.item_ids)
                    ids = [i for i in ids if i in allowed]
            else:
                ids = list(dict.fromkeys(req.item_ids))
            if req.exclude_seen and user in index.seen:
                seen = index.seen[user]
                ids = [i for i in ids if i not in seen]
            rows = index.rows_of(ids)
        if len(rows) == 0:
            return FastJSON({"user_id": user, "known_user": index.known_user(user),
                                 "history": index.history.get(user, []), "task": task, "items": [],
                                 "k": req.k, "pool_size": 0})
        scored = index.score_rows(user, rows, ids, req.timestamp, context_of(req), req.attention)
        k = min(req.k, len(rows))
        top = np.argpartition(-scored.scores, k - 1)[:k]
        top = top[np.argsort(-scored.scores[top], kind="stable")].tolist()
        item_ids = ids if ids is not None else _LazyIds(index.catalog_ids, scored.rows)
        items = items_payload(user, item_ids, scored, top, req.explanations, req.attention)
        return FastJSON({"user_id": user, "known_user": index.known_user(user),
                             "history": index.history.get(user, []), "task": task, "items": items,
                             "k": req.k, "pool_size": int(len(rows))})

    @app.post("/v1/events", response_model=S.EventResponse, responses=WRITE_ERRORS,
              summary="Log an interaction; the user's explanations are refreshed in the background")
    async def events(req: S.EventRequest):
        user, item = req.user_id, req.item_id
        if not index.in_catalog(item):
            raise HTTPException(404, f"unknown item_id {item!r}: events must name an item of the catalog")
        ts = int(time.time()) if req.timestamp is None else req.timestamp
        if follower is not None:
            event_id, _ = follower.post_event(user, item, req.rating, req.label, ts)
        else:
            history = index.next_history(user, item)
            event_id = state.append_event(user, item, req.rating, req.label, ts, history)   # durable first
            index.apply_event(user, item)
        metrics.events.inc()
        if worker is not None:
            worker.notify()
        return FastJSON({"event_id": event_id, "user_id": user, "known_user": index.known_user(user),
                             "history": index.history.get(user, []), "queued": True})

    @app.get("/v1/users/{user_id}", response_model=S.UserResponse, responses=ERRORS,
             summary="A user's current history and explanation counts")
    async def user_info(user_id: str = PathParam(..., min_length=1, max_length=S.MAX_ID_LEN)):
        if not index.exists(user_id):
            raise HTTPException(404, f"unknown user_id {user_id!r}")
        ue = index.expl.get(user_id)
        ready = [i for i, k in ue.slots.items() if ue.sources[k] == "current"] if ue else []
        pending = sorted(index.pending.get(user_id, ()))
        return FastJSON({"user_id": user_id, "known_user": index.known_user(user_id),
                             "history": index.history.get(user_id, []),
                             "interactions": len(index.seen.get(user_id, ())),
                             "explanations_ready": len(ready), "explanations_pending": len(pending),
                             "explained_items": ready, "pending_items": pending})

    @app.get("/healthz", response_model=S.Health,
             summary="ok, or degraded with the reasons (a database lost or failing, the worker stuck)")
    async def healthz():
        reasons = state.problems() + store.problems()
        try:
            queue = state.depth()
        except StorageUnavailable:
            queue = None
        status = "disabled" if worker is None else ("running" if worker.running else "stopped")
        if worker is not None and start_worker and status == "stopped":
            reasons.append("the explanation worker has stopped")
        if worker_elsewhere:
            status = "separate"
            beat = _heartbeat(state)
            if beat is None or time.time() - beat > WORKER_HEARTBEAT_STALE:
                reasons.append("the explanation worker process has not reported for "
                               f"{'ever' if beat is None else f'{time.time() - beat:.0f} s'}")
        if follower is not None and follower.last_error:
            reasons.append(f"not following the other processes' writes: {follower.last_error}")
        if worker is not None and worker.failing_since is not None:
            when = time.strftime("%H:%M:%S", time.gmtime(worker.failing_since))
            reasons.append(f"worker failing since {when} UTC: {worker.stats.last_error}")
        return FastJSON({"status": "degraded" if reasons else "ok", "reasons": reasons, "model": index.model_name,
                         "users": len(index.history), "items": len(index.catalog_ids), "queue_depth": queue,
                         "worker": status,
                         # the backend's name without its URL: /healthz is open even when keys are on
                         "llm": backend.model_id.split("@")[0] if backend is not None else None,
                         "pid": os.getpid()})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _LazyIds:
    """item ids of catalog rows, resolved only for the positions a response shows."""

    def __init__(self, ids: list[str], rows: np.ndarray):
        self.ids, self.rows = ids, rows

    def __getitem__(self, k: int) -> str:
        return self.ids[int(self.rows[k])]


def _warm_up(index: ServingIndex):
    """First forwards allocate and pick kernels; do them before the first request does."""
    user = next(iter(index.history), "warm-up")
    ids = index.catalog_ids[:100]
    for _ in range(3):
        index.score_rows(user, index.rows_of(ids), ids)


def _install_error_handlers(app: FastAPI):
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = []
        for err in exc.errors()[:20]:
            loc = [p for p in err.get("loc", ()) if p != "body"]
            detail.append({"loc": loc, "msg": err.get("msg", "invalid"), "type": err.get("type", "")})
        where = ", ".join(f"{'.'.join(map(str, d['loc'])) or 'body'}: {d['msg']}" for d in detail[:3])
        return JSONResponse({"error": f"invalid request: {where}", "detail": detail}, status_code=422)

    @app.exception_handler(StorageUnavailable)
    async def unavailable(request: Request, exc: StorageUnavailable):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"retry-after": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the body could not be read: it must be UTF-8 encoded JSON"   # FastAPI's words name no cause
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, store: str | Path | None = None,
          llm=None, log_level: str = "info", max_header_bytes: int = 16 * 1024, read_timeout: float = 10.0,
          idle_timeout: float = 10.0, keep_alive: float = 5.0, processes: int = 1, **options):
    """Run the service with uvicorn: one process holding the index and the worker thread, or
    (processes > 1) that many server processes on one port plus the worker in its own process
    (`multi.py`).

    max_header_bytes, read_timeout (a whole request, from its first byte), idle_timeout (a new
    connection's first byte) and keep_alive (between requests) bound what a client can hold."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Path(store) if store else DEFAULT_STORE
    limits = {"max_header_bytes": max_header_bytes, "read_timeout": read_timeout, "idle_timeout": idle_timeout,
              "keep_alive": keep_alive}
    if processes > 1:
        from reasonrec.serve.multi import serve_processes

        return serve_processes(bundle, host, port, store, llm, processes, log_level, limits, options)
    app = create_app(bundle, store, llm, **options)
    uvicorn.run(**uvicorn_options(app, host, port, log_level, **limits))


def uvicorn_options(app, host: str, port: int, log_level: str, max_header_bytes: int = 16 * 1024,
                    read_timeout: float = 10.0, idle_timeout: float = 10.0, keep_alive: float = 5.0) -> dict:
    import importlib.util

    if importlib.util.find_spec("httptools"):
        from reasonrec.serve.protocol import LimitedHttpTools

        http = LimitedHttpTools.with_limits(max_header_bytes, idle_timeout, read_timeout)
    else:                          # h11 bounds the headers itself; it has no read timeout
        log.warning("httptools is not installed: no read timeout (pip install httptools)")
        http = "h11"
    return dict(app=app, host=host, port=port, log_level=log_level, access_log=False,
                loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio", http=http,
                h11_max_incomplete_event_size=max_header_bytes, timeout_keep_alive=keep_alive)


def main(argv: list[str] | None = None):
    """`python -m reasonrec.serve --bundle DIR [--store FILE] [--llm SPEC] [--port N]`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m reasonrec.serve", description=main.__doc__,
                                epilog=f"API keys: set {API_KEYS_ENV}=key1,key2 to require one on /v1/*")
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--store", default=None, help=f"explanation store [default: {DEFAULT_STORE}]")
    p.add_argument("--state", default=None, help="event log + job queue [default: beside the store]")
    p.add_argument("--llm", default=None, help="backend for the worker: embedded | openai:MODEL@URL | "
                                               "py:module:factory?arg=v | none (no worker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--domain", default=None, help="prompt templates [default: from the bundle, else movie]")
    p.add_argument("--top-n", type=int, default=20, help="candidates explained per user after an event")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per LLM batch (one store commit each)")
    p.add_argument("--no-profiles", action="store_true", help="describe items by metadata, not LLM profiles")
    p.add_argument("--no-interaction-reasons", action="store_true",
                   help="do not serve the explanations logged with past interactions")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the request path")
    p.add_argument("--no-jit", action="store_true", help="serve the eager model (no TorchScript trace)")
    p.add_argument("--no-split", action="store_true",
                   help="score every candidate with the full forward (no once-per-user half; for comparisons)")
    p.add_argument("--retry-failed-after", type=float, default=300.0,
                   help="seconds before jobs that failed on backend errors get a fresh set of attempts")
    p.add_argument("--max-header-bytes", type=int, default=16 * 1024, help="larger request headers get 431")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a request may take to arrive, from its first byte (then 408)")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="seconds a new connection may stay silent")
    p.add_argument("--rate-limit", type=float, default=None, help="requests/s per client (API key, else address)")
    p.add_argument("--rate-burst", type=float, default=None, help="requests a client may send at once [= rate]")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port; >1 also moves the LLM worker to its own process")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    try:
        serve(a.bundle, a.host, a.port, store=a.store, llm=a.llm, log_level=a.log_level, state_path=a.state,
              domain=a.domain, top_n=a.top_n, batch_size=a.batch_size, profiles=not a.no_profiles,
              interaction_reasons=not a.no_interaction_reasons, torch_threads=a.threads, jit=not a.no_jit,
              retry_failed_after=a.retry_failed_after, split=not a.no_split, max_header_bytes=a.max_header_bytes,
              read_timeout=a.read_timeout, idle_timeout=a.idle_timeout, rate_limit=a.rate_limit,
              rate_burst=a.rate_burst, processes=a.processes)
    except ReasonrecError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
