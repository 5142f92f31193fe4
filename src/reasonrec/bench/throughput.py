"""Explanation throughput of the embedded LLM: one process, the same prompt pairs, three ways.

(a) one prompt at a time with plain `model.generate`, (b) plain batched `model.generate` (left
padding, same batch size), (c) the cascade engine (`EmbeddedBackend.generate_groups`). All three
use greedy decoding and the same stop rule (end of the first sentence), so their outputs can be
compared token for token (`agreement`).

    python -m reasonrec.bench.throughput --samples 64 --single 16

The built-in prompts imitate the explanation workload (a chat system message, an instruction,
profiles of the consumer's last 5 movies, then a positive and a negative question about a candidate
with a forced answer start); pass `pairs=` to measure real templates instead.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from reasonrec.llm.base import Generation, GenerationParams, Prompt

_TITLE_A = ["Silent", "Last", "Golden", "Broken", "Hidden", "Distant", "Burning", "Lost", "Frozen", "Crimson"]
_TITLE_B = ["Harbor", "Letter", "Season", "Promise", "Road", "Kingdom", "Garden", "Signal", "Summer", "River"]
_GENRES = ["Drama", "Comedy", "Thriller", "Romance", "Sci-Fi", "Crime", "Adventure", "Animation", "Horror",
           "Documentary", "War", "Musical", "Western", "Mystery", "Fantasy"]
_TONE = ["gripping", "quiet", "sprawling", "witty", "bleak", "tender", "fast-paced", "haunting", "playful", "epic"]
_WHO = ["a retired detective", "two estranged sisters", "a young pilot", "a small-town teacher", "an ambitious chef",
        "a lonely robot", "a war photographer", "a jazz pianist", "a teenage hacker", "a grieving father"]
_PLOT = ["uncovers a long-buried family secret", "fights to save a failing farm", "falls for a charming stranger",
         "plans one last daring heist", "searches for a missing brother", "learns to live again after a loss",
         "rises against a corrupt mayor", "survives a brutal winter alone"]
_WHERE = ["1950s Paris", "a remote Alaskan village", "near-future Tokyo", "the Texas desert",
          "a drifting space station", "Victorian London", "a Mediterranean island", "a crowded New York tenement"]
_PRAISE = ["sharp dialogue", "stunning cinematography", "a haunting score", "strong ensemble acting",
           "clever plot twists", "heartfelt performances", "slow-burning tension", "dry humour"]
_EXTRA = ["", "", " It was a surprise box-office hit.", " Critics were divided on its ending.",
          " It won two festival awards.", " Its sequel was less well received."]

SYSTEM = ("You are a recommender-system analyst. You explain a consumer's movie choices truthfully, "
          "in one short sentence.")
HEAD = ("A consumer on a movie platform has recently watched the following movies, listed from oldest to newest, "
        "each with a short profile:\n")


def _movie(r: random.Random) -> str:
    """A ~25-35 word movie profile."""
    return (f"{r.choice(['The ', 'A ', ''])}{r.choice(_TITLE_A)} {r.choice(_TITLE_B)} ({r.randint(1950, 2022)}), "
            f"{', '.join(r.sample(_GENRES, 2))}: a {r.choice(_TONE)} story about {r.choice(_WHO)} who "
            f"{r.choice(_PLOT)} in {r.choice(_WHERE)}, praised for {r.choice(_PRAISE)} and {r.choice(_PRAISE)}."
            f"{r.choice(_EXTRA)}")


def movie_pairs(n: int, seed: int = 0) -> list[tuple[Prompt, Prompt]]:
    """n (positive, negative) prompt pairs shaped like the explanation workload."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        history = "\n".join(f"{k + 1}. {_movie(r)}" for k in range(5))
        candidate = _movie(r)

        def ask(verb: str) -> Prompt:
            return Prompt.user(f"{HEAD}{history}\nBased on this viewing history, explain in one sentence why the "
                               f"consumer {verb} the movie with the following profile: {candidate}",
                               prefix=f"The consumer {verb} this movie because", system=SYSTEM)
        out.append((ask("watched"), ask("did not watch")))
    return out


def _rate(name: str, gens: list[Generation], seconds: float) -> dict:
    tokens = sum(g.tokens for g in gens)
    return {"mode": name, "explanations": len(gens), "seconds": round(seconds, 2), "new_tokens": tokens,
            "expl_per_s": round(len(gens) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def run_throughput(n_samples: int = 64, pairs: list[tuple[Prompt, Prompt]] | None = None, *, backend=None,
                   batch_size: int = 64, max_new_tokens: int = 48, single_samples: int | None = None,
                   rounds: int = 2, modes: tuple[str, ...] = ("single", "batched", "engine"),
                   verbose: bool = True) -> dict:
    """Time (a) single, (b) batched, (c) engine on the same pairs; return rates, ratios, agreement.

    The pairs are split into `rounds` slices and every mode runs on each slice in turn, so a load
    change on a shared machine hits all modes alike instead of whichever ran at that moment.
    single_samples: run (a) on only that many pairs (spread over the rounds); it is by far the
    slowest, and its rate is per explanation, so the ratios stay comparable.
    """
    from reasonrec.llm.embedded import EmbeddedBackend

    be = backend or EmbeddedBackend(batch_size=batch_size)
    pairs = pairs if pairs is not None else movie_pairs(n_samples)
    params = GenerationParams(max_new_tokens=max_new_tokens)
    lengths = [len(be.encode(p)) for pair in pairs for p in pair]
    shared = [_common(be.encode(a), be.encode(b)) for a, b in pairs]
    be.generate_reference(list(pairs[0]), GenerationParams(max_new_tokens=2), batch_size=2)  # warm-up

    rounds = max(1, min(rounds, len(pairs)))
    slices = [pairs[i * len(pairs) // rounds:(i + 1) * len(pairs) // rounds] for i in range(rounds)]
    per_round_single = -(-single_samples // rounds) if single_samples else None
    outputs: dict[str, list[Generation]] = {m: [] for m in modes}
    seconds: dict[str, float] = {m: 0.0 for m in modes}
    for part in slices:
        for mode in modes:
            t = time.perf_counter()
            if mode == "single":
                subset = [p for pair in part[:per_round_single] for p in pair]
                gens = be.generate_reference(subset, params, batch_size=1)
            elif mode == "batched":
                gens = be.generate_reference([p for pair in part for p in pair], params, batch_size=batch_size)
            elif mode == "engine":
                gens = [g for pair in be.generate_groups([list(p) for p in part], params) for g in pair]
            else:
                raise ValueError(f"unknown mode {mode!r}")
            seconds[mode] += time.perf_counter() - t
            outputs[mode].extend(gens)

    results: dict = {"batch_size": batch_size, "pairs": len(pairs), "rounds": rounds,
                     "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads(),
                     "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
                     "shared_prefix_tokens_mean": round(sum(shared) / len(shared), 1), "model_id": be.model_id}
    for mode in modes:
        results[mode] = r = _rate(mode, outputs[mode], seconds[mode])
        if verbose:
            print(f"{mode:8s} {r['explanations']:4d} expl  {r['seconds']:8.1f} s  {r['expl_per_s']:6.2f} expl/s  "
                  f"{r['tokens_per_s']:7.1f} new tok/s", flush=True)
    results["ratios"] = {f"engine/{base}": round(results["engine"]["expl_per_s"] / results[base]["expl_per_s"], 2)
                         for base in ("single", "batched") if "engine" in results and base in results}
    if "engine" in outputs:
        # `single` ran on a prefix of each slice: compare it with the engine's answers to those prompts
        engine_by_prompt = dict(zip([p for part in slices for pair in part for p in pair], outputs["engine"]))
        for base in ("single", "batched"):
            if base in outputs:
                asked = [p for part in slices for pair in (part[:per_round_single] if base == "single" else part)
                         for p in pair]
                same = sum(engine_by_prompt[p].text == g.text for p, g in zip(asked, outputs[base]))
                results[f"agreement_{base}"] = round(same / len(asked), 3)
    if verbose:
        print(json.dumps({k: v for k, v in results.items() if k not in modes}, indent=1))
    return results


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--single", type=int, default=None, help="pairs for the one-at-a-time run (default: all)")
    ap.add_argument("--rounds", type=int, default=2, help="slices the modes take turns on")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--modes", default="single,batched,engine")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None, help="write the result dict here")
    a = ap.parse_args()
    from reasonrec.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(dtype=a.dtype, threads=a.threads, batch_size=a.batch_size)
    res = run_throughput(a.samples, backend=backend, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                         single_samples=a.single, rounds=a.rounds,
                         modes=tuple(a.modes.split(",")))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()


# --- `reasonrec bench throughput --engine ray`: today's `explain --workers N` against `explain --engine ray` ---

def _profiles_only(cache: str | Path, out: Path) -> Path:
    """The item-profile rows of an exported cache, as a Parquet file to import into fresh stores."""
    import pandas as pd

    frame = pd.read_parquet(cache)
    frame[frame["task"] == "profile"].to_parquet(out, index=False)
    return out


def _explain_in_process(args: list[str]) -> float:
    """`reasonrec explain *args` in this process: the CLI's own code path, nothing re-implemented.
    With `--engine ray` it first starts a local Ray (stopped after); returns the seconds that took."""
    from reasonrec.cli import app

    ray = "--engine" in args and args[args.index("--engine") + 1] == "ray"
    startup = _start_ray() if ray else 0.0
    try:
        app(["explain", *args], standalone_mode=False)
    finally:
        if ray:
            _stop_ray()
    return startup


def run_engines(dataset: str, samples: int = 48, *, actors: int = 2, batch_size: int | None = None,
                profiles_cache: str | Path | None = "benchmarks/cache/ml100k-bench-smollm2.parquet",
                llm: str = "embedded", workdir: str | Path | None = None, run=None, verbose: bool = True) -> dict:
    """Explanations/s of `explain --workers N` and of `explain --engine ray --workers N` (N = actors),
    on the first `samples` test samples of `dataset`, in this run, each into its own fresh store.

    Each store starts with only the item profiles of `profiles_cache` (None: `--no-profiles`), so
    both modes generate the same explanations and nothing else. batch_size (samples per batch,
    both modes) defaults to samples / actors: each worker's shard is one batch, and Ray gets one
    batch per actor, so every model decodes equally many prompts at a time in both modes. The Ray
    wall time includes starting Ray (also reported alone: `startup_s`); greedy decoding makes the
    two stores' texts comparable (`identical_texts`). run: runs `explain` with the given arguments and
    returns the seconds Ray took to start (tests pass a fake).
    """
    import os
    import tempfile

    from reasonrec.explain.store import ExplanationStore

    run = run or _explain_in_process
    batch_size = batch_size or max(1, -(-samples // actors))
    common = ["--dataset", dataset, "--llm", llm, "--split", "test", "--max-samples", str(samples),
              "--batch-size", str(batch_size), "--profiles" if profiles_cache else "--no-profiles"]
    threads = max(1, (os.cpu_count() or 1) // actors)  # as `--workers` gives each shard
    with tempfile.TemporaryDirectory(prefix="reasonrec-bench-engines-", dir=workdir) as tmp:
        tmp = Path(tmp)
        seed = _profiles_only(profiles_cache, tmp / "profiles.parquet") if profiles_cache else None
        results: dict = {"dataset": dataset, "samples": samples, "actors": actors, "batch_size": batch_size,
                         "threads_per_worker": threads, "llm": llm}
        texts = {}
        for mode in ("workers", "ray"):
            store_path = tmp / f"{mode}.sqlite"
            store = ExplanationStore(store_path)
            if seed is not None:
                store.import_parquet(seed)
            summary = tmp / f"{mode}.json"
            args = [*common, "--store", str(store_path), "--summary-json", str(summary), "--workers", str(actors)]
            if mode == "ray":
                args += ["--engine", "ray", "--threads", str(threads)]
            t = time.perf_counter()
            startup = run(args) or 0.0
            seconds = time.perf_counter() - t
            stages = [s for s in json.loads(summary.read_text()) if s["stage"] != "profiles"]
            generated = sum(s["generated"] for s in stages)
            texts[mode] = dict(store.frame("WHERE task != 'profile'")[["key", "text"]].itertuples(index=False))
            r = {"explanations": generated, "seconds": round(seconds, 2),
                 "expl_per_s": round(generated / seconds, 3) if seconds else 0.0,
                 "new_tokens": sum(s["new_tokens"] for s in stages),
                 "failed": sum(s["failed"] + s["errors"] for s in stages)}
            if mode == "ray":
                r["startup_s"] = round(startup, 2)
                r["expl_per_s_after_startup"] = round(generated / (seconds - startup), 3) if seconds > startup else 0.0
            results[f"workers{actors}" if mode == "workers" else "ray"] = r
            if verbose:
                print(f"{mode:8s} {generated:4d} expl  {seconds:8.1f} s  {r['expl_per_s']:6.2f} expl/s"
                      + (f"  (Ray start-up {startup:.1f} s)" if mode == "ray" else ""), flush=True)
    base = results[f"workers{actors}"]
    results["ratio"] = round(results["ray"]["expl_per_s"] / base["expl_per_s"], 3) if base["expl_per_s"] else None
    a, b = texts["workers"], texts["ray"]
    results["identical_texts"] = {"same": sum(a.get(k) == v for k, v in b.items()), "workers_rows": len(a),
                                  "ray_rows": len(b), "all": a == b}
    if verbose:
        print(json.dumps({k: results[k] for k in ("ratio", "identical_texts")}, indent=1))
    return results


def _start_ray() -> float:
    """Start a local Ray whose workers import this reasonrec; seconds taken (0 if one is up)."""
    import os

    import ray

    if ray.is_initialized():
        return 0.0
    src = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return time.perf_counter() - t


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
