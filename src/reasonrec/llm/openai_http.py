"""Backend for OpenAI-compatible HTTP servers: vLLM, llama.cpp server, Ollama, OpenAI, our own.

`/v1/chat/completions` by default: the forced answer start (`Prompt.prefix`) is sent as a final
assistant message with `continue_final_message: true, add_generation_prompt: false` (vLLM's
extension; our server understands it too) and an echoed prefix is stripped from the answer. With
`completion_template` set, prompts are rendered client-side and sent raw to `/v1/completions`.

Requests run concurrently (bounded thread pool over one httpx client). Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff and jitter; a prompt that still fails
comes back as `Generation(finish_reason="error")` so one bad request never sinks a batch. Any other
4xx (bad model name, bad key, bad parameters) raises a `ReasonrecError` naming the status and the
server's message: it would fail every request the same way.

A dead server is reported, not waited out. Before the first prompt, `check()` asks `GET /models`:
an unreachable server or a rejected key raises `BackendUnavailable` naming the URL and the cause.
During a run, a circuit breaker counts transport failures (connection refused or reset, timeouts)
in a row, all threads together; any answer from the server resets the count. By default it opens
after `retries + 1` of them per request in flight (`concurrency`, or fewer in a small call): about
when every request in flight has used up its retries with none getting through, so a restart that
the retries would ride out does not trip it. Once open, no request starts and no retry waits:
`generate` raises `BackendUnavailable`, and the next `generate` checks the server first. Prompts
that failed this way come back as errors or not at all; callers store neither.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from reasonrec.errors import BackendUnavailable, ReasonrecError
from reasonrec.llm.base import Capabilities, Generation, GenerationParams, Prompt, first_sentence, generate_flat

# server-side stops for "one sentence" (4 is OpenAI's limit); the client cuts again exactly
SENTENCE_STOPS = [". ", ".\n", "! ", "? "]


def chatml(prompt: Prompt) -> str:
    """ChatML rendering (SmolLM2, Qwen): for `completion_template="chatml"`."""
    turns = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in prompt.messages)
    return f"{turns}<|im_start|>assistant\n{prompt.prefix}"


TEMPLATES: dict[str, Callable[[Prompt], str]] = {"chatml": chatml}


# A connect slower than this means the host is unreachable, whatever the read timeout allows.
CONNECT_TIMEOUT = 10.0


class _Retryable(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx)."""


class _Unreachable(_Retryable):
    """No answer from the server at all: what the circuit breaker counts."""


def describe_transport_error(err: httpx.TransportError) -> str:
    """The cause of a transport failure in words a user can act on, the raw error in brackets."""
    chain, e = [], err
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    raw = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in raw.lower():
        cause = "connection refused (nothing listening at that address?)"
    elif any(isinstance(e, socket.gaierror) for e in chain) or "name or service not known" in raw.lower():
        cause = "the host name does not resolve (DNS)"
    elif isinstance(err, httpx.ConnectTimeout):
        cause = "connection timed out (host down or unreachable?)"
    elif isinstance(err, httpx.TimeoutException):
        cause = "the server did not answer in time"
    elif isinstance(err, httpx.RemoteProtocolError):
        cause = "the server closed the connection without answering"
    elif isinstance(err, httpx.ReadError | httpx.WriteError):
        cause = "the connection broke"
    else:
        cause = "transport error"
    return f"{cause} [{raw}]"


def openai_model_id(model: str, base_url: str) -> str:
    return f"openai:{model}@{base_url.rstrip('/')}"


class OpenAIHTTPBackend:
    """base_url: up to and including /v1, e.g. http://127.0.0.1:8000/v1.

    api_key_env: environment variable holding the API key (read once; never logged).
    completion_template: None (chat endpoint) | "chatml" | a function Prompt -> raw prompt text.
    concurrency: requests in flight. timeout: seconds per request. retries: extra attempts after
    the first. max_unreachable: transport failures in a row that open the circuit breaker
    (default (retries + 1) per request in flight). model_id: identity for cache keys (default
    "openai:<model>@<base_url>"). transport: an httpx transport (custom networking, or a mock in
    unit tests).
    """

    capabilities = Capabilities(batching=True, prefix_sharing=False, logprobs=False)

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", *,
                 api_key_env: str = "OPENAI_API_KEY", completion_template: str | Callable[[Prompt], str] | None = None,
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 4, backoff: float = 0.5,
                 max_backoff: float = 16.0, max_unreachable: int | None = None, model_id: str | None = None,
                 transport: httpx.BaseTransport | None = None):
        if isinstance(completion_template, str):
            if completion_template not in TEMPLATES:
                raise ReasonrecError(f"completion_template {completion_template!r}: expected one of "
                                     f"{', '.join(TEMPLATES)} or a function")
            completion_template = TEMPLATES[completion_template]
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id or openai_model_id(model, base_url)
        self.render = completion_template
        self.concurrency, self.retries = concurrency, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_unreachable = max_unreachable
        self._limit = max_unreachable or concurrency * (retries + 1)  # generate() sizes it to its call
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env)
        self._key = key or None  # only to scrub it from server messages
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
                                    limits=httpx.Limits(max_connections=concurrency), transport=transport)
        self.served_models: list[str] | None = None  # what GET /models listed, once check() ran
        self._checked = False
        self._lock = threading.Lock()
        self._unreachable = 0           # transport failures in a row, all threads together
        self._last_failure = ""
        self._open = threading.Event()  # the breaker: set = stop sending

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAIHTTPBackend(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def check(self) -> None:
        """Ask the server for its model list. Raises `BackendUnavailable` naming the URL and the cause
        when it cannot be reached, rejects the key, or fails. A server without the endpoint (404/405)
        passes: the first prompt will tell. Asked once; the circuit breaker re-arms it."""
        if self._checked:
            return
        url = f"{self.base_url}/models"
        try:
            r = self._client.get(url, timeout=min(CONNECT_TIMEOUT, self._client.timeout.read or CONNECT_TIMEOUT))
        except httpx.TransportError as err:
            raise BackendUnavailable(f"LLM server {self.base_url} is unreachable: GET {url}: "
                                     f"{describe_transport_error(err)}") from None
        if r.status_code in (401, 403):
            key = "set" if self._key else "not set"
            raise BackendUnavailable(f"LLM server {self.base_url} refused access: GET {url} answered HTTP "
                                     f"{r.status_code}: {self._scrub(_message(r))} (the API key is read from "
                                     f"${self.api_key_env}, which is {key})")
        if r.status_code >= 400 and r.status_code not in (404, 405):
            raise BackendUnavailable(f"LLM server {self.base_url} is not ready: GET {url} answered HTTP "
                                     f"{r.status_code}: {self._scrub(_message(r))}")
        try:
            data = r.json()["data"]
            self.served_models = [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError):
            self.served_models = None
        self._checked = True

    # -- LLMBackend ----------------------------------------------------------------------------

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[Generation]:
        if not prompts:
            return []
        if self._open.is_set():  # tripped in an earlier call: start afresh if the server is back
            with self._lock:
                self._open.clear()
                self._unreachable = 0
        if not self._checked:
            self.check()
        workers = min(self.concurrency, len(prompts))
        self._limit = self.max_unreachable or workers * (self.retries + 1)
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(self._one, p, params) for p in prompts]
                try:
                    return [f.result() for f in futures]
                except ReasonrecError:
                    for f in futures:
                        f.cancel()
                    raise
        except BackendUnavailable as err:  # the pool has drained: keep what was answered before the trip
            err.partial = [f.result() if f.done() and not f.cancelled() and f.exception() is None else None
                           for f in futures]
            raise

    def generate_groups(self, groups: list[list[Prompt]], params: GenerationParams) -> list[list[Generation]]:
        return generate_flat(self, groups, params)

    def score(self, prompts: list[Prompt], continuations: list[str]) -> list[float]:
        raise ReasonrecError(f"{self!r} cannot score continuations (no log-probs over HTTP); "
                             "use the embedded or vllm backend for the judge")

    # -- one request ---------------------------------------------------------------------------

    def _one(self, prompt: Prompt, params: GenerationParams) -> Generation:
        url, body = self._request(prompt, params)
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                self._open.wait(delay * (0.5 + random.random()))  # jitter spreads a batch's retries out
            if self._open.is_set():
                raise self._tripped()
            try:
                data = self._post(url, body)
            except _Unreachable as err:
                error = str(err)
                self._unreachable_once(error)
                continue
            except _Retryable as err:
                error = str(err)
                self._answered()
                continue
            self._answered()
            try:
                return self._parse(data, prompt, params)
            except _Retryable as err:
                error = str(err)
        if self._open.is_set():  # its last attempt opened the breaker
            raise self._tripped()
        return Generation(text="", finish_reason="error", error=f"{error} (after {self.retries + 1} attempts)")

    # -- circuit breaker -----------------------------------------------------------------------

    def _answered(self) -> None:
        if self._unreachable:
            with self._lock:
                self._unreachable = 0

    def _unreachable_once(self, error: str) -> None:
        with self._lock:
            self._unreachable += 1
            self._last_failure = error
            if self._unreachable >= self._limit and not self._open.is_set():
                self._checked = False  # the next call asks the server first
                self._open.set()

    def _tripped(self) -> BackendUnavailable:
        return BackendUnavailable(f"LLM server {self.base_url} stopped answering: {self._unreachable} attempts "
                                  f"in a row failed, the last: {self._last_failure}")

    def _request(self, prompt: Prompt, params: GenerationParams) -> tuple[str, dict]:
        body: dict = {"model": self.model, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                      "top_p": params.top_p, "seed": params.seed}
        if params.stop_at_sentence_end:
            body["stop"] = SENTENCE_STOPS
        if self.render is not None:
            body["prompt"] = self.render(prompt)
            return f"{self.base_url}/completions", body
        body["messages"] = [{"role": r, "content": c} for r, c in prompt.messages]
        if prompt.prefix:
            body["messages"].append({"role": "assistant", "content": prompt.prefix})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return f"{self.base_url}/chat/completions", body

    def _post(self, url: str, body: dict) -> dict:
        try:
            r = self._client.post(url, json=body)
        except httpx.TransportError as err:  # connection refused/reset, timeouts
            raise _Unreachable(f"POST {url}: {describe_transport_error(err)}") from None
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"POST {url}: HTTP {r.status_code}: {self._scrub(_message(r))}")
        if r.status_code >= 400:
            hint = ""
            if r.status_code == 404 and self.served_models and self.model not in self.served_models:
                hint = f" (the server lists: {', '.join(self.served_models[:10])})"
            raise ReasonrecError(f"POST {url} (model {self.model!r}) failed with HTTP {r.status_code}: "
                                 f"{self._scrub(_message(r))}{hint}")
        try:
            return r.json()
        except ValueError:
            raise _Retryable(f"POST {url}: HTTP {r.status_code} with a body that is not JSON") from None

    def _parse(self, data: dict, prompt: Prompt, params: GenerationParams) -> Generation:
        try:
            choice = data["choices"][0]
            text = choice["text"] if self.render is not None else choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retryable(f"unexpected response shape: {str(data)[:200]}") from None
        text = text or ""
        if prompt.prefix and text.startswith(prompt.prefix):  # some servers echo the forced start
            text = text[len(prompt.prefix):]
        stop_reason = choice.get("stop_reason")
        if isinstance(stop_reason, str) and stop_reason in SENTENCE_STOPS:
            text += stop_reason.rstrip()  # servers drop the stop string; keep its punctuation
        if params.stop_at_sentence_end:
            text = first_sentence(text)
        usage = data.get("usage") or {}
        reason = choice.get("finish_reason") or "stop"
        return Generation(text=text, tokens=usage.get("completion_tokens", 0),
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          finish_reason="length" if reason == "length" else "stop")

    def _scrub(self, message: str) -> str:
        """A server may quote the key it was sent in its error message."""
        return message.replace(self._key, "***") if self._key else message


def _message(r: httpx.Response) -> str:
    """The server's error message (OpenAI/vLLM {"error": {"message"}}, FastAPI {"detail"}) or raw text."""
    try:
        data = r.json()
    except ValueError:
        return r.text[:500] or r.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "detail" in data:
            return str(data["detail"])
        if "message" in data:
            return str(data["message"])
    return str(data)[:500]
