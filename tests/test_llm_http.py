"""The OpenAI-compatible HTTP backend.

Unit tests drive the client through an httpx MockTransport (request shapes, retries, parsing).
The slow tests start our own server (`python -m reasonrec.llm.server`, uvicorn, the real SmolLM2)
on a free port in a subprocess and check real answers, a client timeout, retried 500s, a failed
prompt inside a batch, and clear errors for 4xx.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from reasonrec.errors import ReasonrecError
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


def _mock(handler, **kwargs) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend("m", "http://llm.test/v1", transport=httpx.MockTransport(handler),
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


# -- against a real server process ------------------------------------------------------------

MODEL = "smol"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "REASONREC_SERVER_TEST_HOOKS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reasonrec.llm.server", "--port", str(port), "--threads", "1",
                             "--model-name", MODEL], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{proc.stdout.read().decode()[-3000:]}")
            try:
                httpx.get(f"{url}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url
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
    (g,) = _client(server, timeout=0.5, retries=1).generate([PROMPT], SHORT)
    assert g.finish_reason == "error" and "Timeout" in g.error
    assert time.monotonic() - t < 3.0  # gave up after two 0.5 s attempts, did not wait for the server


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
