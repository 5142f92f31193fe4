"""The OpenAI-compatible HTTP backend.

Unit tests drive the client through an httpx MockTransport (request shapes, retries, parsing,
the check before the first prompt, the circuit breaker). A threaded HTTP server in the test
process dies in the middle of an explanation run, and `reasonrec explain` meets a closed port.
The slow tests start our own server (`python -m reasonrec.llm.server`, uvicorn, the real SmolLM2)
on a free port in a subprocess and check real answers, a client timeout, retried 500s, a failed
prompt inside a batch, clear errors for 4xx, and a run whose server is killed half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from reasonrec.errors import BackendUnavailable, ReasonrecError
from reasonrec.llm import get_backend, model_id_of
from reasonrec.llm.base import GenerationParams, Prompt
from reasonrec.llm.openai_http import OpenAIHTTPBackend, chatml

PROMPT = Prompt.user("Name one famous movie and say why people like it.", prefix="One famous movie is",
                     system="You are a helpful assistant.")
SHORT = GenerationParams(max_new_tokens=24)


def _reply(text: str, stop_reason=None, finish="stop", chat=True) -> dict:
    choice = {"index": 0, "finish_reason": finish, "stop_reason": stop_reason}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return {"choices": [choice], "usage": {"prompt_tokens": 11, "completion_tokens": 5}}


def _mock(handler, models: bool = True, **kwargs) -> OpenAIHTTPBackend:
    """A client of `handler`; with `models`, GET /v1/models (the check before the first prompt) is
    answered here, so that `handler` sees only generation requests."""
    def route(request):
        if models and request.url.path == "/v1/models":
            return _models(request)
        return handler(request)

    return OpenAIHTTPBackend("m", "http://llm.test/v1", transport=httpx.MockTransport(route),
                             backoff=0.001, **kwargs)


def test_chat_request_carries_prefix_and_answer_is_cleaned():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        # echoes the forced start; the server dropped the stop string ". "
        return httpx.Response(200, json=_reply("One famous movie is Jaws, a thriller", stop_reason=". "))

    (g,) = _mock(handler).generate([PROMPT], SHORT)
    path, body = seen[0]
    assert path == "/v1/chat/completions"
    assert body["messages"][-1] == {"role": "assistant", "content": "One famous movie is"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_tokens"] == 24 and body["temperature"] == 0.0 and body["stop"]
    assert g.text == " Jaws, a thriller." and g.tokens == 5 and g.prompt_tokens == 11 and g.finish_reason == "stop"


def test_completions_endpoint_with_a_raw_template():
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=_reply(" Jaws. It is scary.", chat=False, finish="stop"))

    (g,) = _mock(handler, completion_template="chatml").generate([PROMPT], SHORT)
    assert seen[0]["prompt"] == chatml(PROMPT) and seen[0]["prompt"].endswith("assistant\nOne famous movie is")
    assert g.text == " Jaws."  # cut to one sentence client-side too


def test_429_and_5xx_are_retried_then_succeed():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, json={"error": {"message": "slow down"}})
        if len(calls) == 2:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json=_reply(" Jaws."))

    (g,) = _mock(handler, retries=3).generate([PROMPT], SHORT)
    assert len(calls) == 3 and g.finish_reason == "stop" and g.text == " Jaws."


def test_exhausted_retries_give_an_error_generation_not_an_exception():
    b = _mock(lambda r: httpx.Response(500, json={"error": {"message": "boom"}}), retries=2)
    (g,) = b.generate([PROMPT], SHORT)
    assert g.finish_reason == "error" and "HTTP 500" in g.error and "boom" in g.error and "3 attempts" in g.error


def test_4xx_raises_with_status_and_server_message():
    b = _mock(lambda r: httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}}))
    with pytest.raises(ReasonrecError, match=r"HTTP 401: Incorrect API key provided"):
        b.generate([PROMPT, PROMPT], SHORT)


def test_api_key_comes_from_the_named_env_var_and_is_never_shown(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    auth = []

    def handler(request):
        auth.append(request.headers.get("authorization"))
        return httpx.Response(200, json=_reply(" Jaws."))

    b = _mock(handler, api_key_env="MY_LLM_KEY")
    b.generate([PROMPT], SHORT)
    assert auth == ["Bearer sk-secret-123"]
    assert "sk-secret" not in repr(b) and "sk-secret" not in b.model_id


def test_factory_and_capabilities():
    b = get_backend("openai:Qwen2.5-7B@http://gpu1:8000/v1/", concurrency=2)
    assert isinstance(b, OpenAIHTTPBackend) and b.base_url == "http://gpu1:8000/v1"
    assert b.model_id == "openai:Qwen2.5-7B@http://gpu1:8000/v1" and not b.capabilities.logprobs
    assert model_id_of("openai:Qwen2.5-7B@http://gpu1:8000/v1/") == b.model_id
    assert model_id_of("vllm:Qwen/Qwen2.5-7B") == "vllm:Qwen/Qwen2.5-7B"
    with pytest.raises(ReasonrecError, match="log-probs"):
        b.score([PROMPT], [" yes"])
    for bad in (get_backend, model_id_of):
        with pytest.raises(ReasonrecError, match="expected"):
            bad("openai:no-url")


# -- a dead or dying server: preflight check and circuit breaker --------------------------------

URL = "http://llm.test/v1"


def _models(request):
    return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})


def _refused(message="[Errno 111] Connection refused"):
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as cause:
        raise httpx.ConnectError(message) from cause


def _unresolvable():
    try:
        raise socket.gaierror(-2, "Name or service not known")
    except socket.gaierror as cause:
        raise httpx.ConnectError("[Errno -2] Name or service not known") from cause


@pytest.mark.parametrize("fail, cause", [
    (_refused, "connection refused"),
    (_unresolvable, "the host name does not resolve"),
    (lambda: (_ for _ in ()).throw(httpx.ConnectTimeout("timed out")), "connection timed out"),
    (lambda: (_ for _ in ()).throw(httpx.ReadTimeout("timed out")), "the server did not answer in time"),
    (lambda: (_ for _ in ()).throw(httpx.RemoteProtocolError("Server disconnected")), "the server closed the connection"),
])
def test_check_names_the_url_and_the_cause(fail, cause):
    def handler(request):
        fail()

    b = _mock(handler, models=False)
    with pytest.raises(BackendUnavailable, match=f"LLM server {URL} is unreachable: GET {URL}/models: {cause}"):
        b.generate([PROMPT], SHORT)


def test_check_refused_key_names_the_variable_never_the_key(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    b = _mock(lambda r: httpx.Response(401, json={"error": {"message": "Incorrect API key provided: sk-secret-123"}}),
              api_key_env="MY_LLM_KEY", models=False)
    with pytest.raises(BackendUnavailable) as err:
        b.check()
    assert "HTTP 401" in str(err.value) and "$MY_LLM_KEY, which is set" in str(err.value)
    assert "sk-secret" not in str(err.value)
    monkeypatch.delenv("MY_LLM_KEY")
    with pytest.raises(BackendUnavailable, match=r"\$MY_LLM_KEY, which is not set"):
        _mock(lambda r: httpx.Response(403, text="forbidden"), api_key_env="MY_LLM_KEY", models=False).check()


def test_check_passes_servers_without_a_model_list_and_fails_broken_ones():
    def no_list(request):
        if request.url.path == "/v1/models":
            return httpx.Response(404, text="Not Found")
        return httpx.Response(200, json=_reply(" Jaws."))

    assert _mock(no_list, models=False).generate([PROMPT], SHORT)[0].text == " Jaws."
    with pytest.raises(BackendUnavailable, match="not ready: .*HTTP 503: loading"):
        _mock(lambda r: httpx.Response(503, text="loading"), models=False).check()


def test_unknown_model_error_lists_what_the_server_serves():
    def handler(request):
        if request.url.path == "/v1/models":
            return _models(request)
        return httpx.Response(404, json={"error": {"message": "The model `foo` does not exist."}})

    b = OpenAIHTTPBackend("foo", URL, transport=httpx.MockTransport(handler))
    with pytest.raises(ReasonrecError, match=r"HTTP 404: The model `foo` does not exist. \(the server lists: m\)"):
        b.generate([PROMPT], SHORT)


class _Dies:
    """Answers `answers` prompts, then every request fails like a dead server (connection refused)."""

    def __init__(self, answers: int):
        self.answers, self.posts, self.alive = answers, 0, True
        self.lock = threading.Lock()

    def __call__(self, request):
        if request.url.path == "/v1/models":
            if not self.alive:
                _refused()
            return _models(request)
        with self.lock:
            self.posts += 1
            if self.posts > self.answers:
                self.alive = False
        if not self.alive:
            _refused()
        return httpx.Response(200, json=_reply(" Jaws."))


def test_breaker_stops_the_batch_after_a_run_of_transport_failures():
    server = _Dies(answers=3)
    b = _mock(server, models=False, concurrency=2, retries=2)  # opens after 2 * 3 = 6 failures in a row
    with pytest.raises(BackendUnavailable, match=f"LLM server {URL} stopped answering: .* connection refused") as err:
        b.generate([PROMPT] * 50, SHORT)
    # the 3 answers come back with the error; the rest failed (error) or were never sent (None)
    assert [g.finish_reason for g in err.value.partial[:3]] == ["stop"] * 3
    assert all(g is None or g.finish_reason == "error" for g in err.value.partial[3:])
    failed = server.posts - server.answers
    # the thread that did not trip it may have one request in flight; nothing else is sent
    assert 6 <= failed <= 7
    # the next call asks the server first and fails at once
    with pytest.raises(BackendUnavailable, match="is unreachable: GET .*/models: connection refused"):
        b.generate([PROMPT], SHORT)
    assert server.posts - server.answers == failed
    server.alive, server.answers = True, 10 ** 6  # back up: the same client works again
    assert [g.finish_reason for g in b.generate([PROMPT] * 3, SHORT)] == ["stop"] * 3


def test_a_small_call_trips_after_the_retries_of_its_own_requests():
    server = _Dies(answers=0)
    b = _mock(server, concurrency=8, retries=2)
    with pytest.raises(BackendUnavailable, match="3 attempts in a row failed"):
        b.generate([PROMPT], SHORT)  # one request in flight: its 3 attempts are the whole run
    assert server.posts == 3


def test_any_answer_resets_the_breaker():
    calls = []

    def flaky(request):  # every other request is refused: a server that always answers the retry
        calls.append(1)
        if len(calls) % 2:
            _refused()
        return httpx.Response(200, json=_reply(" Jaws."))

    b = _mock(flaky, concurrency=1, retries=1)  # would open after 2 failures in a row
    gens = b.generate([PROMPT] * 10, SHORT)
    assert [g.finish_reason for g in gens] == ["stop"] * 10 and len(calls) == 20


def test_5xx_answers_are_not_transport_failures():
    b = _mock(lambda r: httpx.Response(502, text="bad gateway"), concurrency=1, retries=1, max_unreachable=1)
    gens = b.generate([PROMPT] * 3, SHORT)  # the server answered each time: retried, reported, not tripped
    assert all(g.finish_reason == "error" and "HTTP 502" in g.error for g in gens)


# -- a real HTTP server that dies in the middle of a run ---------------------------------------

class _TinyServer:
    """An OpenAI-compatible server in a thread: lists one model and answers chat requests with a
    sentence derived from the prompt, until `answers` of them; the next request then finds the
    process "dead": `mode="refuse"` drops that connection and closes the listening socket (a
    crashed server: connection refused from then on); `mode="drop"` keeps accepting and closes
    every connection without answering (a wedged proxy)."""

    def __init__(self, answers: int = 10 ** 6, mode: str = "refuse", port: int = 0):
        self.answers, self.mode, self.answered, self.after_death = answers, mode, [], 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._json({"object": "list", "data": [{"id": "tiny", "object": "model"}]})
                else:
                    self._json({"error": {"message": "no such path"}}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    dead = len(outer.answered) >= outer.answers
                    if dead:
                        outer.after_death += 1
                    else:
                        outer.answered.append(json.dumps(body["messages"]))
                if dead:
                    self.close_connection = True
                    if outer.mode == "refuse":
                        threading.Thread(target=outer.stop, daemon=True).start()
                    return
                self._json(_reply(outer.reply(json.dumps(body["messages"]))))

            def _json(self, data, status=200):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        self._stopped = False

    @staticmethod
    def reply(messages: str) -> str:
        return f" the consumer likes {hashlib.sha1(messages.encode()).hexdigest()[:8]} and it fits the history well."

    def stop(self):
        with self.lock:
            if self._stopped:
                return
            self._stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tiny_data():
    from reasonrec.data.prepare import PrepareConfig, prepare
    from reasonrec.data.readers import read

    return prepare(read("ml-100k"), PrepareConfig(max_users=3, last_n_per_user=4))


def _explainer(url, store, **backend):
    from reasonrec.explain.generate import ExplainConfig, Explainer
    from reasonrec.explain.templates import load_templates

    backend = get_backend(f"openai:tiny@{url}", backoff=0.01, **backend)
    return Explainer(backend, store, load_templates("movie"), ExplainConfig(profiles=False, batch_size=2))


@pytest.mark.parametrize("mode", ["refuse", "drop"])
def test_server_dying_mid_run_stops_the_run_and_the_rerun_resumes(tiny_data, tmp_path, mode):
    from reasonrec.explain.store import ExplanationStore

    store = ExplanationStore(tmp_path / "e.sqlite")
    server = _TinyServer(answers=5, mode=mode)
    try:
        ex = _explainer(server.url, store, concurrency=2, retries=2)
        cause = "connection refused" if mode == "refuse" else "closed the connection without answering"
        with pytest.raises(BackendUnavailable, match=f"LLM server {server.url} stopped answering: .*{cause}") as err:
            ex.run(tiny_data.samples, tiny_data.items, progress=False)
        # batches of 4 texts (2 samples x positive/negative): the second batch got one answer, then
        # two threads x 3 attempts failed: 6 in a row open the breaker; the one answer is kept
        assert "stopped with 5 of 24 texts made and stored" in str(err.value)
        if mode == "drop":  # every attempt reached the server: 6 in a row, + 1 in flight at most
            assert 6 <= server.after_death <= 7
    finally:
        server.stop()
    stored = store.frame()
    assert sorted(stored["raw"]) == sorted(_TinyServer.reply(m) for m in server.answered)
    assert len(stored) == 5 and set(stored["status"]) == {"ok"}

    revived = _TinyServer(port=server.httpd.server_address[1])  # same URL: the URL is part of the model id
    try:
        summary = _explainer(revived.url, store).run(tiny_data.samples, tiny_data.items, progress=False)[-1]
    finally:
        revived.stop()
    assert summary.cached == 5 and summary.generated == 19 and summary.errors == 0
    assert not set(revived.answered) & set(server.answered)  # nothing answered before is asked again
    assert len(store.frame()) == 24


def test_explain_cli_exits_fast_on_a_closed_port(tmp_path, tiny_data):
    data = tiny_data.save(tmp_path / "data")
    store = tmp_path / "store.sqlite"
    with socket.socket() as closed:  # bound but not listening: connecting is refused, and no one can take it
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        done = subprocess.run([sys.executable, "-m", "reasonrec.cli", "explain", "--dataset", str(data),
                               "--llm", f"openai:foo@{url}", "--store", str(store)],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert f"error: LLM server {url} is unreachable: GET {url}/models: connection refused" in done.stderr
    from reasonrec.explain.store import ExplanationStore

    assert ExplanationStore(store).count() == 0


def test_backend_options_keep_what_each_kind_takes():
    from reasonrec.llm import backend_options

    assert backend_options("gguf:/m.gguf", threads=2) == {"threads": 2}
    assert backend_options("openai:m@http://h/v1", threads=2, concurrency=32) == {"concurrency": 32}
    assert backend_options("vllm:m", threads=2) == {}
    with pytest.raises(ReasonrecError, match="--concurrency 4: only openai"):
        backend_options("gguf:/m.gguf", concurrency=4)


def test_explain_workers_share_a_server(tmp_path, tiny_data):
    data = tiny_data.save(tmp_path / "data")
    store = tmp_path / "store.sqlite"
    server = _TinyServer()
    try:  # the workers get --threads (the embedded model's), which a server backend must ignore
        cmd = [sys.executable, "-m", "reasonrec.cli", "explain", "--dataset", str(data), "--llm",
               f"openai:tiny@{server.url}", "--store", str(store), "--workers", "2", "--concurrency", "3"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "0 cached, 24 generated" in done.stdout
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert "24 cached, 0 generated" in again.stdout
    finally:
        server.stop()
    assert len(server.answered) == 26 + 24  # profiles, then 12 samples x 2 texts, each asked once


# -- against a real server process ------------------------------------------------------------

MODEL = "smol"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen:
    """`python -m reasonrec.llm.server` on `port`, once it answers GET /v1/models."""
    env = {**os.environ, "REASONREC_SERVER_TEST_HOOKS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reasonrec.llm.server", "--port", str(port), "--threads", "1",
                             "--model-name", MODEL], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{proc.stdout.read().decode()[-3000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                return proc
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = _start_server(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def hooks(server):
    def set_hooks(**values):
        return httpx.post(f"{server}/test/hooks", json=values, timeout=5).json()
    yield set_hooks
    set_hooks(delay_s=0.0, fail_next=0, fail_status=500)


def _client(server, **kwargs) -> OpenAIHTTPBackend:
    kwargs.setdefault("backoff", 0.05)
    return get_backend(f"openai:{MODEL}@{server}/v1", **kwargs)


@pytest.mark.slow
def test_server_answers_like_the_embedded_backend(server):
    from reasonrec.llm.embedded import EmbeddedBackend

    assert httpx.get(f"{server}/v1/models").json()["data"][0]["id"] == MODEL
    # with a system message, so that the model's template and plain ChatML render the same text
    prompts = [PROMPT, Prompt.user("Describe the sea in one sentence.", prefix="The sea", system="Be poetic.")]
    embedded = EmbeddedBackend()
    # one prompt per call, as the server runs them: batch composition changes float rounding
    local = [embedded.generate([p], SHORT)[0] for p in prompts]
    chat = _client(server).generate(prompts, SHORT)
    raw = _client(server, completion_template="chatml").generate(prompts, SHORT)
    assert [g.text for g in chat] == [g.text for g in local] == [g.text for g in raw]
    assert all(g.text.strip() and g.finish_reason in ("stop", "length") and g.tokens > 0 for g in chat)


@pytest.mark.slow
def test_client_timeout_becomes_an_error_generation(server, hooks):
    hooks(delay_s=3.0)
    t = time.monotonic()
    # a breaker that tolerates more than this prompt's two attempts: its failure stays its own
    (g,) = _client(server, timeout=0.5, retries=1, max_unreachable=3).generate([PROMPT], SHORT)
    assert g.finish_reason == "error" and "ReadTimeout" in g.error and "did not answer in time" in g.error
    assert time.monotonic() - t < 3.0  # gave up after two 0.5 s attempts, did not wait for the server
    # by default, the only request in flight timing out on every attempt means nothing gets through
    with pytest.raises(BackendUnavailable, match="stopped answering: 2 attempts in a row failed.*did not answer"):
        _client(server, timeout=0.5, retries=1).generate([PROMPT], SHORT)


@pytest.mark.slow
def test_500s_are_retried_until_the_server_recovers(server, hooks):
    hooks(fail_next=2)
    (g,) = _client(server, retries=3).generate([PROMPT], SHORT)
    assert g.finish_reason != "error" and g.text.strip()
    assert hooks()["fail_next"] == 0


@pytest.mark.slow
def test_one_failed_request_does_not_sink_the_batch(server, hooks):
    hooks(fail_next=1)
    bad, good = _client(server, retries=0, concurrency=1).generate([PROMPT, PROMPT], SHORT)
    assert bad.finish_reason == "error" and "HTTP 500" in bad.error
    assert good.finish_reason != "error" and good.text.strip()


@pytest.mark.slow
def test_4xx_from_the_server_is_a_clear_error(server):
    with pytest.raises(ReasonrecError, match=r"HTTP 404: The model `nope` does not exist"):
        get_backend(f"openai:nope@{server}/v1").generate([PROMPT], SHORT)
    with pytest.raises(ReasonrecError, match=r"HTTP 422.*max_tokens"):
        _client(server).generate([PROMPT], GenerationParams(max_new_tokens=0))


@pytest.mark.slow
def test_explain_stops_when_the_real_server_is_killed_and_the_rerun_resumes(tmp_path, tiny_data):
    import sqlite3

    data = tiny_data.save(tmp_path / "data")
    store = tmp_path / "store.sqlite"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "reasonrec.cli", "explain", "--dataset", str(data), "--llm", f"openai:{MODEL}@{url}",
           "--no-profiles", "--max-samples", "4", "--batch-size", "1", "--store", str(store)]

    def rows() -> dict:
        try:
            with sqlite3.connect(store, timeout=30) as con:
                return {k: (c, r) for k, c, r in con.execute("SELECT key, created, raw FROM generations")}
        except sqlite3.OperationalError:  # not created yet
            return {}

    server = _start_server(port)
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(rows()) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        server.kill()  # mid-run: a request is in flight, then nothing listens
        server.wait()
        killed = time.monotonic()
        _, err = run.communicate(timeout=30)
        print(f"explain exited {time.monotonic() - killed:.1f} s after the server was killed")
    finally:
        run.kill()
        server.kill()
    assert run.returncode != 0, err
    assert f"error: LLM server {url} stopped answering" in err and "attempts in a row failed" in err
    before = rows()
    assert 2 <= len(before) < 8 and all(raw for _, raw in before.values())  # only what the model wrote

    server = _start_server(port)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    after = rows()
    assert len(after) == 8 and all(after[k] == v for k, v in before.items())  # kept, not regenerated
    assert f"{len(before)} cached, {8 - len(before)} generated" in done.stdout
