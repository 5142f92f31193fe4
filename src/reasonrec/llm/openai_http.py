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
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import Capabilities, Generation, GenerationParams, Prompt, first_sentence, generate_flat

# server-side stops for "one sentence" (4 is OpenAI's limit); the client cuts again exactly
SENTENCE_STOPS = [". ", ".\n", "! ", "? "]


def chatml(prompt: Prompt) -> str:
    """ChatML rendering (SmolLM2, Qwen): for `completion_template="chatml"`."""
    turns = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in prompt.messages)
    return f"{turns}<|im_start|>assistant\n{prompt.prefix}"


TEMPLATES: dict[str, Callable[[Prompt], str]] = {"chatml": chatml}


class _Retryable(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx)."""


def openai_model_id(model: str, base_url: str) -> str:
    return f"openai:{model}@{base_url.rstrip('/')}"


class OpenAIHTTPBackend:
    """base_url: up to and including /v1, e.g. http://127.0.0.1:8000/v1.

    api_key_env: environment variable holding the API key (read once; never logged).
    completion_template: None (chat endpoint) | "chatml" | a function Prompt -> raw prompt text.
    concurrency: requests in flight. timeout: seconds per request. retries: extra attempts after
    the first. model_id: identity for cache keys (default "openai:<model>@<base_url>").
    transport: an httpx transport (custom networking, or a mock in unit tests).
    """

    capabilities = Capabilities(batching=True, prefix_sharing=False, logprobs=False)

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", *,
                 api_key_env: str = "OPENAI_API_KEY", completion_template: str | Callable[[Prompt], str] | None = None,
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 4, backoff: float = 0.5,
                 max_backoff: float = 16.0, model_id: str | None = None,
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
        key = os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout),
                                    limits=httpx.Limits(max_connections=concurrency), transport=transport)

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAIHTTPBackend(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- LLMBackend ----------------------------------------------------------------------------

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[Generation]:
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._one, p, params) for p in prompts]
            try:
                return [f.result() for f in futures]
            except ReasonrecError:
                for f in futures:
                    f.cancel()
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
                time.sleep(delay * (0.5 + random.random()))  # jitter: retries of a batch spread out
            try:
                return self._parse(self._post(url, body), prompt, params)
            except _Retryable as err:
                error = str(err)
        return Generation(text="", finish_reason="error", error=f"{error} (after {self.retries + 1} attempts)")

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
            raise _Retryable(f"POST {url}: {type(err).__name__}: {err}") from None
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"POST {url}: HTTP {r.status_code}: {_message(r)}")
        if r.status_code >= 400:
            raise ReasonrecError(f"POST {url} (model {self.model!r}) failed with HTTP {r.status_code}: {_message(r)}")
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
