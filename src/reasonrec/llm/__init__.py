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

__all__ = ["Capabilities", "Generation", "GenerationParams", "LLMBackend", "Prompt", "get_backend", "model_id_of"]


def _gguf_path(kind: str, rest: str):
    """The GGUF file of an embedded-kind spec, or None for other kinds."""
    if kind == "embedded" and not rest:
        from reasonrec.assets import smollm2_gguf
        return smollm2_gguf()
    if kind == "gemma3" and not rest:  # the optional second embedded size (Gemma terms)
        from reasonrec.assets import gemma3_gguf
        return gemma3_gguf()
    if kind == "gguf" and rest:
        return rest
    return None


def _bad_spec(spec: str) -> ReasonrecError:
    return ReasonrecError(f"LLM backend spec {spec!r}: expected embedded | gemma3 | gguf:/path/file.gguf | "
                          "openai:MODEL@BASE_URL | vllm:MODEL")


def get_backend(spec: str = "embedded", **kwargs) -> LLMBackend:
    """Build a backend from a spec string; keyword arguments go to its constructor."""
    kind, _, rest = spec.partition(":")
    if (gguf := _gguf_path(kind, rest)) is not None:
        from reasonrec.llm.embedded import EmbeddedBackend
        return EmbeddedBackend.from_gguf(gguf, **kwargs)
    if kind == "openai" and "@" in rest:
        from reasonrec.llm.openai_http import OpenAIHTTPBackend
        model, _, base_url = rest.partition("@")
        if model and base_url:
            return OpenAIHTTPBackend(model, base_url, **kwargs)
    if kind == "vllm" and rest:
        from reasonrec.llm.vllm_backend import VLLMBackend
        return VLLMBackend(rest, **kwargs)
    raise _bad_spec(spec)


def model_id_of(spec: str = "embedded", dtype: str = "float32") -> str:
    """The `model_id` that `get_backend(spec)` would have, without loading weights or connecting:
    what reading texts from the store needs (it keys every row)."""
    kind, _, rest = spec.partition(":")
    if (gguf := _gguf_path(kind, rest)) is not None:
        from reasonrec.llm.embedded import embedded_model_id
        return embedded_model_id(gguf, dtype)
    if kind == "openai" and "@" in rest:
        model, _, base_url = rest.partition("@")
        if model and base_url:
            return f"openai:{model}@{base_url.rstrip('/')}"
    if kind == "vllm" and rest:
        return f"vllm:{rest}"
    raise _bad_spec(spec)
