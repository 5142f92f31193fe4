"""A small OpenAI-compatible server over the embedded backend.

    python -m reasonrec.llm.server [--gguf FILE] [--host 127.0.0.1] [--port 8000]

Endpoints: GET /v1/models, POST /v1/completions (raw prompt), POST /v1/chat/completions (chat
template; understands vLLM's `continue_final_message` / `add_generation_prompt` so a forced answer
start can be sent as a final assistant message). Responses carry vLLM's `stop_reason` (the stop
string that ended a choice). Requests are answered one at a time: this server exists so that the
HTTP backend can be tested against a real process serving a real model, not for throughput.

Test hooks (only when the process runs with REASONREC_SERVER_TEST_HOOKS=1):
    POST /test/hooks {"delay_s": 2.0, "fail_next": 2, "fail_status": 500}
    delay_s      every generation request sleeps this long before answering (client timeouts)
    fail_next    the next N generation requests answer HTTP `fail_status` (default 500) (retries)
The body replaces the given fields and the reply shows the current hooks.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from reasonrec.llm.embedded import EmbeddedBackend
from reasonrec.llm.engine import picker

HOOKS_ENV = "REASONREC_SERVER_TEST_HOOKS"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (n, logprobs, user, ...) are ignored
    model: str
    max_tokens: int = Field(16, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionRequest(_Request):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class Hooks(BaseModel):
    delay_s: float | None = None
    fail_next: int | None = None
    fail_status: int | None = None


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


def create_app(backend: EmbeddedBackend, model_name: str, test_hooks: bool = False) -> FastAPI:
    app = FastAPI(title="reasonrec LLM server")
    tok = backend.tokenizer
    hooks = {"delay_s": 0.0, "fail_next": 0, "fail_status": 500}
    hooks_lock = threading.Lock()

    def gate(req: _Request) -> JSONResponse | None:
        """Unknown model -> 404 (as OpenAI/vLLM do); then the test hooks."""
        if req.model != model_name:
            return _error(404, f"The model `{req.model}` does not exist.", "not_found_error")
        with hooks_lock:
            delay, fail = hooks["delay_s"], hooks["fail_next"] > 0
            if fail:
                hooks["fail_next"] -= 1
        if delay:
            time.sleep(delay)
        if fail:
            return _error(hooks["fail_status"], "injected failure (test hook)", "server_error")
        return None

    def run(texts: list[str], req: _Request) -> tuple[list[dict], dict]:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        if not all(ids):
            raise ValueError("empty prompt")

        def done(out: list[int]) -> bool:
            if out[-1] in backend.eos_ids:
                return True
            return bool(stops) and any(s in tok.decode(out, skip_special_tokens=True) for s in stops)

        groups = backend.generate_ids([[i] for i in ids], req.max_tokens, done,
                                      picker(req.temperature, req.top_p, req.seed or 0))
        choices, new = [], 0
        for n, ((c,), prompt) in enumerate(zip(groups, ids)):
            text = tok.decode(c.ids, skip_special_tokens=True)
            hits = [(text.find(s), s) for s in stops if s in text]
            stop_reason = None
            if hits:
                at, stop_reason = min(hits)
                text = text[:at]
            reason = "stop" if hits or c.ids[-1] in backend.eos_ids else "length"
            choices.append({"index": n, "text": text, "finish_reason": reason, "stop_reason": stop_reason})
            new += len(c.ids)
        prompt_tokens = sum(map(len, ids))
        return choices, {"prompt_tokens": prompt_tokens, "completion_tokens": new, "total_tokens": prompt_tokens + new}

    def envelope(kind: str, choices: list[dict], usage: dict) -> dict:
        return {"id": f"{kind}-{uuid.uuid4().hex[:16]}", "object": kind, "created": int(time.time()),
                "model": model_name, "choices": choices, "usage": usage}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "reasonrec",
                                            "created": 0}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if (bad := gate(req)) is not None:
            return bad
        try:
            choices, usage = run([req.prompt] if isinstance(req.prompt, str) else req.prompt, req)
        except ValueError as err:
            return _error(400, str(err))
        return envelope("text_completion", [{**c, "logprobs": None} for c in choices], usage)

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        if (bad := gate(req)) is not None:
            return bad
        try:
            text = tok.apply_chat_template([m.model_dump() for m in req.messages], tokenize=False,
                                           add_generation_prompt=req.add_generation_prompt,
                                           continue_final_message=req.continue_final_message)
            (choice,), usage = run([text], req)
        except ValueError as err:  # includes template errors such as continue_final_message misuse
            return _error(400, str(err))
        message = {"role": "assistant", "content": choice.pop("text")}
        return envelope("chat.completion", [{**choice, "message": message}], usage)

    if test_hooks:
        @app.post("/test/hooks")
        def set_hooks(h: Hooks) -> dict:
            with hooks_lock:
                hooks.update({k: v for k, v in h.model_dump().items() if v is not None})
                return dict(hooks)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="OpenAI-compatible server over the embedded LLM")
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--model-name", default=None, help="name clients send as `model` (default: the file name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    backend = EmbeddedBackend(a.gguf, dtype=a.dtype, threads=a.threads)
    name = a.model_name or backend.model_id.split(":")[0].removesuffix(".gguf")
    app = create_app(backend, name, test_hooks=os.environ.get(HOOKS_ENV) == "1")
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)


if __name__ == "__main__":
    main()
