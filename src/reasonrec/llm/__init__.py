"""LLM backends behind one interface (`base.LLMBackend`): embedded GGUF on CPU, OpenAI-compatible
HTTP servers, in-process vLLM.

    get_backend("embedded")                                  # SmolLM2-135M-Instruct shipped in a wheel
    get_backend("gemma3")                                    # Gemma-3-270M from its chunk wheels
    get_backend("gguf:/models/gemma-3-270m.gguf")            # any GGUF, same engine
    get_backend("openai:Qwen2.5-7B-Instruct@http://gpu1:8000/v1")
    get_backend("vllm:Qwen/Qwen2.5-7B-Instruct")             # GPU machine with vLLM installed

Backends are imported lazily: an HTTP client never loads torch models, and vLLM is only imported
when asked for.
"""

from __future__ import annotations

from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import Capabilities, Generation, GenerationParams, LLMBackend, Prompt

__all__ = ["Capabilities", "Generation", "GenerationParams", "LLMBackend", "Prompt", "backend_options", "get_backend",
           "model_id_of"]


def _parse(spec: str) -> tuple[str, tuple]:
    """A backend spec as (kind, arguments): ("gguf", (path,)), ("openai", (model, base_url)) or
    ("vllm", (model,)); `embedded` and `gemma3` name the GGUFs shipped in wheels."""
    kind, _, rest = spec.partition(":")
    if kind == "embedded" and not rest:
        from reasonrec.assets import smollm2_gguf
        return "gguf", (smollm2_gguf(),)
    if kind == "gemma3" and not rest:  # the optional second embedded size (Gemma terms)
        from reasonrec.assets import gemma3_gguf
        return "gguf", (gemma3_gguf(),)
    if kind == "gguf" and rest:
        return "gguf", (rest,)
    if kind == "openai" and "@" in rest:
        model, _, base_url = rest.partition("@")
        if model and base_url:
            return "openai", (model, base_url)
    if kind == "vllm" and rest:
        return "vllm", (rest,)
    raise ReasonrecError(f"LLM backend spec {spec!r}: expected embedded | gemma3 | gguf:/path/file.gguf | "
                         "openai:MODEL@BASE_URL | vllm:MODEL")


def get_backend(spec: str = "embedded", **kwargs) -> LLMBackend:
    """Build a backend from a spec string; keyword arguments go to its constructor."""
    kind, args = _parse(spec)
    if kind == "gguf":
        from reasonrec.llm.embedded import EmbeddedBackend
        return EmbeddedBackend.from_gguf(*args, **kwargs)
    if kind == "openai":
        from reasonrec.llm.openai_http import OpenAIHTTPBackend
        return OpenAIHTTPBackend(*args, **kwargs)
    from reasonrec.llm.vllm_backend import VLLMBackend
    return VLLMBackend(*args, **kwargs)


def backend_options(spec: str, threads: int | None = None, concurrency: int | None = None) -> dict:
    """Constructor options for `get_backend(spec)` from command-line settings that only some kinds
    take. threads (CPU threads of a local model) is dropped for servers and vLLM, so that one set
    of worker arguments fits every backend; concurrency is an error for anything but a server."""
    kind, _ = _parse(spec)
    if concurrency is not None and kind != "openai":
        raise ReasonrecError(f"--concurrency {concurrency}: only openai:MODEL@BASE_URL backends send requests "
                             f"concurrently, not {spec!r}")
    if kind == "gguf":
        return {"threads": threads} if threads else {}
    if kind == "openai":
        return {"concurrency": concurrency} if concurrency else {}
    return {}


def model_id_of(spec: str = "embedded", dtype: str = "float32") -> str:
    """The `model_id` that `get_backend(spec)` would have, without loading weights or connecting:
    what reading texts from the store needs (it keys every row)."""
    kind, args = _parse(spec)
    if kind == "gguf":
        from reasonrec.llm.embedded import embedded_model_id
        return embedded_model_id(*args, dtype)
    if kind == "openai":
        from reasonrec.llm.openai_http import openai_model_id
        return openai_model_id(*args)
    from reasonrec.llm.vllm_backend import vllm_model_id
    return vllm_model_id(*args)
