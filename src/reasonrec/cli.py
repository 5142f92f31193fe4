"""The `reasonrec` command line: a thin typer layer over the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from reasonrec.errors import ReasonrecError
from reasonrec.explain import MAX_MISSING

app = typer.Typer(help="LLM-reasoning-powered, explainable CTR and rating prediction.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read raw datasets into the samples schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _split_pairs(pairs: list[str], shape: str, hint: str) -> list[tuple[str, str]]:
    """Repeatable `A=B` options -> [(A, B)], stripped; a pair without '=' is a clear error."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected {shape}, got {pair!r}", param_hint=hint)
        left, right = pair.split("=", 1)
        out.append((left.strip(), right.strip()))
    return out


def _parse_columns(pairs: list[str]) -> dict[str, str]:
    return dict(_split_pairs(pairs, "OURS=THEIRS", "--col"))


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Option("ml-100k", help="ml-100k (embedded) | movielens | amazon | yelp | tripadvisor | "
                                                "bookcrossing | csv"),
    path: Optional[Path] = typer.Option(None, help="file or directory of the raw data (not needed for ml-100k)"),
    out: Optional[Path] = typer.Option(None, help="output directory [default: artifacts/data/<dataset>]"),
    max_users: Optional[int] = typer.Option(None, help="keep this many users (deterministic, seeded)"),
    last_n_per_user: Optional[int] = typer.Option(None, help="keep each user's last N interactions "
                                                             "(histories still come from the full timeline)"),
    label_threshold: Optional[float] = typer.Option(None, help="label = rating >= this [dataset default]"),
    test_frac: float = typer.Option(0.2), valid_frac: float = typer.Option(0.1),
    seed: int = typer.Option(0),
    skip_bad_rows: bool = typer.Option(False, help="count and skip bad rows instead of stopping at the first"),
    col: list[str] = typer.Option([], help="csv reader column mapping, OURS=THEIRS (e.g. user_id=uid)"),
    domain: Optional[str] = typer.Option(None, help="csv reader: movie | product | restaurant | hotel | book"),
    rating_scale: Optional[str] = typer.Option(None, help="csv reader: LOW-HIGH, e.g. 0-10 [1-5; 0-1 for labels]; "
                                                          "ratings outside it are bad rows"),
    time_unit: str = typer.Option("auto", help="csv reader: epoch unit s | ms | us | ns, or auto (from magnitude)"),
    date_format: Optional[str] = typer.Option(None, help="csv reader: strptime format for day/month dates, "
                                                         "e.g. '%d/%m/%Y' (required for dates like 03/04/2021)"),
    items: Optional[Path] = typer.Option(None, help="csv reader: items side file (CSV/TSV/Parquet)"),
    users: Optional[Path] = typer.Option(None, help="csv reader: users side file (CSV/TSV/Parquet)"),
    duplicates: str = typer.Option("first", help="repeated (user, item, timestamp): first (keep one, count) | error"),
):
    """Read a dataset, split it per user by time, and write samples/items/users Parquet + a dataset card."""
    # Polars' allocator keeps freed pages for 10 s by default; on 20M rows that is a gigabyte of
    # resident memory after the sort that nothing uses. Read once, when Polars is first imported.
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
    from reasonrec.data.prepare import PrepareConfig, prepare
    from reasonrec.data.readers import read

    from reasonrec.data.schema import parse_scale

    options = {"skip_bad_rows": skip_bad_rows}
    csv_only = {"--col": col, "--domain": domain, "--rating-scale": rating_scale, "--date-format": date_format,
                "--items": items, "--users": users, "--time-unit": None if time_unit == "auto" else time_unit}
    if dataset == "csv":
        options.update(columns=_parse_columns(col), rating_scale=parse_scale(rating_scale) if rating_scale else None,
                       time_unit=time_unit, date_format=date_format, items_path=items, users_path=users)
        if domain:
            options["domain"] = domain
    else:
        given = [name for name, value in csv_only.items() if value]
        if given:
            raise ReasonrecError(f"{', '.join(given)} only apply to --dataset csv; the {dataset} reader declares "
                                 "its own columns, scale and time format")
    raw = read(dataset, path, **options)
    cfg = PrepareConfig(test_frac=test_frac, valid_frac=valid_frac, label_threshold=label_threshold,
                        max_users=max_users, last_n_per_user=last_n_per_user, seed=seed, skip_bad_rows=skip_bad_rows,
                        duplicates=duplicates)
    prepared = prepare(raw, cfg, release_raw=True)
    target = prepared.save(out or Path("artifacts") / "data" / dataset)
    typer.echo((target / "card.md").read_text())
    typer.echo(f"wrote {target}/samples.parquet, items.parquet, users.parquet, card.json, rejects.csv")


@data_app.command("show")
def data_show(path: Path = typer.Argument(Path("artifacts/data/ml-100k"), help="a prepared dataset directory"),
              as_json: bool = typer.Option(False, "--json")):
    """Print the dataset card of a prepared dataset."""
    card = path / ("card.json" if as_json else "card.md")
    if not card.is_file():
        raise ReasonrecError(f"{path}: no dataset card; run `reasonrec data prepare` first")
    typer.echo(card.read_text())


def _dataset_dir(dataset: str) -> Path:
    """A prepared dataset: a directory, or a name under artifacts/data/."""
    path = Path(dataset)
    if not (path / "samples.parquet").is_file():
        path = Path("artifacts") / "data" / dataset
    if not (path / "samples.parquet").is_file():
        raise ReasonrecError(f"no prepared dataset at '{dataset}' or '{path}'; run `reasonrec data prepare` first")
    return path


@app.command("explain")
def explain(
    dataset: str = typer.Option("ml-100k-bench", help="prepared dataset directory or name under artifacts/data/"),
    llm: str = typer.Option("embedded", help="embedded | gguf:/path.gguf | openai:MODEL@BASE_URL | vllm:MODEL"),
    variant: str = typer.Option("contrastive", help="contrastive | positive_only | aspects | general | summary | "
                                                    "alt_prompt | direct"),
    profiles: bool = typer.Option(True, help="describe items by LLM-written profiles (the CoT step)"),
    split: Optional[list[str]] = typer.Option(None, help="only these splits (repeatable) [default: all]"),
    max_samples: Optional[int] = typer.Option(None, help="only the first N samples (after the split filter, before sharding)"),
    batch_size: int = typer.Option(128, help="samples per batch (one store commit each)"),
    store: Path = typer.Option(Path("artifacts/store/explanations.sqlite"), help="the explanation store"),
    summary_json: Optional[Path] = typer.Option(None, help="also write the run summary here"),
    retry_failed: bool = typer.Option(False, help="generate again the prompts whose stored output failed, or "
                                                  "fails today's clean-up (after a clean-up or stop-rule fix)"),
    shard: Optional[str] = typer.Option(None, help="I/N: only samples with sample_id % N == I, so N processes "
                                                   "(one thread each, or N machines sharing the store) split a run"),
    threads: Optional[int] = typer.Option(None, help="CPU threads of the embedded model [default: re-picked per "
                                                     "batch from the cores other jobs leave free]"),
    workers: int = typer.Option(1, help="worker processes, one shard each, sharing the store: on a small CPU, "
                                        "N single-threaded workers beat one N-threaded process"),
    concurrency: Optional[int] = typer.Option(None, min=1, help="requests in flight to an openai: server, per "
                                                                "process [default: 8]"),
    engine: str = typer.Option("local", help="local | ray: Ray Data over the batches, --workers actors each "
                                             "holding the backend (pip install 'reasonrec[ray]')"),
    ray_address: Optional[str] = typer.Option(None, help="with --engine ray: a running cluster (auto | "
                                                         "ray://HOST:PORT) [default: start a local one]"),
):
    """Generate (or complete) the explanations of a prepared dataset into the store."""
    from reasonrec.data.prepare import load_prepared
    from reasonrec.explain.generate import ExplainConfig, Explainer, needed_items, shard_samples
    from reasonrec.explain.store import ExplanationStore
    from reasonrec.explain.templates import load_templates
    from reasonrec.llm import backend_options, get_backend

    if workers > 1 and shard:
        raise ReasonrecError("--workers starts its own shards: give either --workers or --shard")
    if engine not in ("local", "ray"):
        raise ReasonrecError(f"--engine {engine!r}: expected local | ray")
    data = load_prepared(_dataset_dir(dataset))
    samples = data.samples
    if split:
        samples = samples[samples["split"].isin(split)]
    if max_samples is not None:
        samples = samples.head(max_samples)
    if shard:
        samples = shard_samples(samples, shard)
    domain = data.card.get("domain", "movie")
    if engine == "ray" and threads is None and ray_address is None:
        threads = max(1, (os.cpu_count() or 1) // workers)  # one core's share per actor, as each --workers shard
    options = backend_options(llm, threads, concurrency)
    if engine == "ray":  # the backends live in the actors; here only the model id keys the store
        from reasonrec.explain.ray_engine import BackendSpec, RayEngine
        from reasonrec.llm import model_id_of
        from reasonrec.llm.base import ModelIdOnly

        backend, runner = ModelIdOnly(model_id_of(llm)), RayEngine(BackendSpec(llm, **options), actors=workers,
                                                                   cpus_per_actor=threads or 1, address=ray_address)
    else:
        backend, runner = get_backend(llm, **options), None
    explainer = Explainer(backend, ExplanationStore(store), load_templates(domain),
                          ExplainConfig(variant=variant, profiles=profiles, batch_size=batch_size,
                                        retry_failed=retry_failed), engine=runner)
    typer.echo(f"{len(samples):,} samples of {dataset} ({domain}), variant {variant}, "
               f"profiles {'on' if profiles else 'off'}, model {explainer.model_id}"
               + (f", shard {shard}" if shard else f", {workers} Ray actors" if runner else
                  f", {workers} workers" if workers > 1 else ""))
    if workers > 1 and runner is None:
        from reasonrec.explain.workers import run_workers

        # profiles first, here: every shard needs them and none should make one twice
        _, profile_summary = explainer.item_texts(needed_items(samples, data.items))
        del explainer
        args = ["--dataset", dataset, "--llm", llm, "--variant", variant,
                "--profiles" if profiles else "--no-profiles", "--batch-size", str(batch_size), "--store", str(store)]
        args += [x for s in split or [] for x in ("--split", s)]
        args += ["--max-samples", str(max_samples)] if max_samples is not None else []
        args += ["--retry-failed"] if retry_failed else []
        args += ["--concurrency", str(concurrency)] if concurrency else []
        summaries = [s for s in [profile_summary] if s is not None]
        summaries += [s for s in run_workers(args, workers, threads) if s.stage != "profiles"]
    else:
        summaries = explainer.run(samples, data.items, bar_position=int(shard.split("/")[0]) if shard else 0)
    for s in summaries:
        typer.echo(s.line())
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps([s.as_dict() for s in summaries], indent=2))


def _parse_seeds(seeds: Optional[str]) -> Optional[list[int]]:
    if not seeds:
        return None
    try:
        return [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None


def _parse_sets(pairs: list[str]) -> dict:
    """--set KEY=VALUE (VALUE read as YAML: 3e-3, [64, 8], true); KEY may be train.lr or lr."""
    import yaml

    return {key.removeprefix("train."): yaml.safe_load(value) for key, value in _split_pairs(pairs, "KEY=VALUE", "--set")}


@app.command("train")
def train(
    dataset: str = typer.Option("ml-100k-bench", help="prepared dataset directory or name under artifacts/data/"),
    model: str = typer.Option("lr-recsys", help="lr-recsys | ncf | deepfm | dcnv2 | din | gru4rec | sasrec | bert4rec | "
                                                "fat | apg | optfusion"),
    preset: Optional[str] = typer.Option(None, help="a named preset of the model (lr-recsys: faithful = the paper's "
                                                    "exact settings)"),
    task: Optional[str] = typer.Option(None, help="classification (rating >= threshold) | regression (the rating)"),
    with_explanations: Optional[bool] = typer.Option(None, "--with-explanations/--without-explanations",
                                                     help="feed explanation embeddings [default: on for lr-recsys]"),
    free_vectors: bool = typer.Option(False, help="Ablation 1: free learnable vectors in place of explanations"),
    encoder: Optional[str] = typer.Option(None, help="autoencoder (the paper's) | sentence (MiniLM) | llm (hidden states)"),
    llm: str = typer.Option("embedded", help="whose explanations to read from the store"),
    variant: str = typer.Option("contrastive"),
    profiles: bool = typer.Option(True, help="explanations written with item profiles (the CoT step)"),
    side_features: Optional[bool] = typer.Option(None, help="use genres/year/age/... [default: reasonrec.config]"),
    seeds: str = typer.Option("0", help="comma-separated seeds; several print mean ± std"),
    lr: Optional[float] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    epochs: Optional[int] = typer.Option(None), patience: Optional[int] = typer.Option(None),
    embed_dim: Optional[int] = typer.Option(None),
    monitor: Optional[str] = typer.Option(None, help="early stopping on valid auc | logloss (rmse | mae for regression)"),
    nproc: Optional[int] = typer.Option(None, help="train each seed on N local processes (DDP over gloo); the global "
                                                   "batch stays --batch-size [default: 1]"),
    set_: list[str] = typer.Option([], "--set", help="any config option, KEY=VALUE (e.g. dropout=0.2, "
                                                    "train.weight_decay=1e-6, mlp=[64,8]); see reasonrec.config"),
    store: Path = typer.Option(Path("artifacts/store/explanations.sqlite")),
    max_missing: float = typer.Option(MAX_MISSING, help="tolerated share of samples without texts (failed clean-up or "
                                                 "not generated); their texts are read as empty"),
    out: Optional[Path] = typer.Option(None, help="save the bundle(s) here [default: artifacts/models/<model>]"),
    progress: bool = typer.Option(True),
):
    """Train a recommender (optionally reading explanations from the store) and report test metrics.
    Settings not given come from the model's defaults (reasonrec.config; `--preset` picks a named set)."""
    from reasonrec.config import resolve
    from reasonrec.data.prepare import load_prepared
    from reasonrec.pipeline import load_explanations, mean_std, run_seeds

    data = load_prepared(_dataset_dir(dataset))
    use_text = (model == "lr-recsys") if with_explanations is None else with_explanations
    given = {"model": model, "preset": preset, "task": task, "encoder": encoder, "side_features": side_features,
             "lr": lr, "batch_size": batch_size, "epochs": epochs, "patience": patience, "embed_dim": embed_dim,
             "monitor": monitor, "nproc": nproc, "explanations": "free" if free_vectors else ("text" if use_text else "none")}
    cfg = resolve({**{k: v for k, v in given.items() if v is not None}, **_parse_sets(set_)})
    table = None
    if cfg.explanations == "text":
        table, info = load_explanations(data, llm, variant, profiles, store, max_missing)
        cfg = cfg.model_copy(update={"text_columns": info["text_columns"], "strip_prefixes": info["strip_prefixes"]})
        typer.echo(f"explanations: {variant} from {info['model_id']}, coverage {info['coverage']:.2%}")
    typer.echo("config: " + json.dumps(cfg.model_dump(mode="json", exclude={"text_columns", "strip_prefixes"})))
    frame = run_seeds(data, cfg, _parse_seeds(seeds), table, out or Path("artifacts") / "models" / model, progress)
    metrics = ["test_auc", "test_logloss"] if cfg.task == "classification" else \
        ["test_rmse", "test_mae", "test_rmse_norm", "test_mae_norm"]
    cols = ["seed", *metrics, "best_epoch", "seconds_per_epoch", "dead_units", "encoder_params"]
    typer.echo(frame[[c for c in cols if c in frame]].to_string(index=False))
    for name, (mean, std) in mean_std(frame, metrics).items():
        typer.echo(f"{name}: {mean:.4f} ± {std:.4f}")


@app.command("serve")
def serve_cmd(
    bundle: Path = typer.Option(..., help="model bundle directory (from `reasonrec train`)"),
    store: Path = typer.Option(Path("artifacts/store/explanations.sqlite")),
    state: Optional[Path] = typer.Option(None, help="event log + job queue [default: <store>.serve.sqlite beside "
                                                    "the store]"),
    llm: Optional[str] = typer.Option(None, help="backend for the explanation worker (embedded | openai:MODEL@URL); "
                                                 "none = serve only what is precomputed"),
    host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
    top_n: int = typer.Option(20, help="candidates explained per user after an event"),
    batch_size: int = typer.Option(8, help="pairs per LLM batch"),
    domain: Optional[str] = typer.Option(None), profiles: bool = typer.Option(True),
    threads: int = typer.Option(1, help="torch threads on the request path"),
    jit: bool = typer.Option(True, help="serve a verified TorchScript trace of the model"),
    retry_failed_after: float = typer.Option(300.0, help="seconds before jobs that failed on backend errors are "
                                                         "tried again"),
    max_header_bytes: int = typer.Option(16 * 1024, help="larger request headers get 431"),
    read_timeout: float = typer.Option(10.0, help="seconds a request may take to arrive (then 408)"),
    idle_timeout: float = typer.Option(10.0, help="seconds a new connection may stay silent"),
    rate_limit: Optional[float] = typer.Option(None, help="requests/s per client (API key, else address)"),
    rate_burst: Optional[float] = typer.Option(None, help="requests a client may send at once [= rate]"),
    processes: int = typer.Option(1, help="server processes sharing the port; >1 also moves the LLM worker to "
                                          "its own process"),
):
    """Serve /v1/score, /v1/recommend, /v1/events, /healthz and /metrics over a bundle.

    Set REASONREC_API_KEYS=key1,key2 to require an API key (x-api-key or Bearer) on /v1/*."""
    from reasonrec.serve import serve

    serve(bundle, host, port, store=store, state_path=state, llm=llm, domain=domain, top_n=top_n,
          batch_size=batch_size, profiles=profiles, torch_threads=threads, jit=jit,
          retry_failed_after=retry_failed_after, max_header_bytes=max_header_bytes, read_timeout=read_timeout,
          idle_timeout=idle_timeout, rate_limit=rate_limit, rate_burst=rate_burst, processes=processes)


@app.command("precompute")
def precompute_cmd(
    bundle: Path = typer.Option(...), store: Path = typer.Option(Path("artifacts/store/explanations.sqlite")),
    state: Optional[Path] = typer.Option(None, help="the server's state DB [default: <store>.serve.sqlite]"),
    llm: str = typer.Option("embedded"), users: Optional[list[str]] = typer.Option(None, help="[default: all]"),
    top_n: int = typer.Option(20), batch_size: int = typer.Option(16), domain: Optional[str] = typer.Option(None),
    profiles: bool = typer.Option(True), max_seconds: Optional[float] = typer.Option(None),
):
    """Fill the store with explanations for each user's top-N candidates (resumable)."""
    from reasonrec.serve import precompute

    typer.echo(json.dumps(precompute(bundle, store, llm, users=users or None, top_n=top_n, batch_size=batch_size,
                                     domain=domain, profiles=profiles, max_seconds=max_seconds, state_path=state),
                          indent=2))


bench_app = typer.Typer(help="Benchmarks: LLM throughput, serving latency, and YAML specs -> cached runs -> REPORT.md.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("throughput")
def bench_throughput(
    dataset: Optional[str] = typer.Option("ml-100k-bench", help="take real prompts (with the stored item "
                                                                "profiles) from this prepared dataset; "
                                                                "'synthetic' for generated ones"),
    samples: int = typer.Option(64), single: Optional[int] = typer.Option(None, help="samples for mode (a) "
                                                                                   "[default: all]"),
    batch_size: Optional[int] = typer.Option(None, help="[default: 64; with --engine ray: samples / workers, "
                                                        "samples per explain batch]"),
    threads: Optional[int] = typer.Option(None, help="[default: auto]"),
    out: Optional[Path] = typer.Option(None, help="also write the results as JSON"),
    engine: Optional[str] = typer.Option(None, help="ray: instead, time `explain --workers N` against "
                                                    "`explain --engine ray --workers N` on the first --samples test "
                                                    "samples, each into a fresh store seeded with --profiles-cache"),
    workers: int = typer.Option(2, help="with --engine ray: worker processes and Ray actors"),
    profiles_cache: Optional[Path] = typer.Option(Path("benchmarks/cache/ml100k-bench-smollm2.parquet"),
                                                  help="with --engine ray: item profiles to seed both stores with; "
                                                       "'none' runs --no-profiles"),
):
    """One process, the same samples: (a) one prompt at a time, (b) batched generate, (c) the engine.

    With --engine ray: explanations/s of today's `explain --workers N` and of `explain --engine ray`."""
    if engine is not None:
        from reasonrec.bench.throughput import run_engines

        if engine != "ray":
            raise ReasonrecError(f"--engine {engine!r}: expected ray")
        if dataset == "synthetic":
            raise ReasonrecError("--engine ray runs `explain` on a prepared dataset, not 'synthetic'")
        cache = None if profiles_cache is None or str(profiles_cache) == "none" else profiles_cache
        result = run_engines(str(_dataset_dir(dataset)), samples, actors=workers, batch_size=batch_size,
                             profiles_cache=cache)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
        return
    from reasonrec.bench.throughput import run_throughput
    from reasonrec.llm import get_backend

    batch_size = batch_size or 64
    backend = get_backend("embedded", threads=threads or "auto", batch_size=batch_size)
    pairs = None
    if dataset != "synthetic":
        from reasonrec.data.prepare import load_prepared
        from reasonrec.pipeline import explainer_for

        data = load_prepared(_dataset_dir(dataset))
        test = data.samples[data.samples["split"] == "test"].sample(samples, random_state=0)
        explainer = explainer_for(data, backend=backend)
        texts, _ = explainer.item_texts(data.items, progress=False, generate=False)
        jobs = explainer.sample_jobs(test, texts)
        pairs = [(jobs[i].prompt, jobs[i + 1].prompt) for i in range(0, len(jobs), 2)]
    result = run_throughput(samples, pairs, backend=backend, batch_size=batch_size, single_samples=single)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))


@bench_app.command("serve")
def bench_serve(
    bundle: Optional[Path] = typer.Option(None, help="[default: build a small synthetic bundle]"),
    levels: str = typer.Option("1,8,32"), max_requests: int = typer.Option(2000),
    max_seconds: float = typer.Option(20.0), candidates: int = typer.Option(100),
    endpoints: str = typer.Option("score,recommend", help="score, recommend or both"),
    server_arg: list[str] = typer.Option([], help="extra `python -m reasonrec.serve` flag (repeatable), "
                                                  "e.g. --server-arg=--no-split"),
    issue: bool = typer.Option(False, help="issue #17's acceptance run: 1 and 2 server processes, /v1/score "
                                           "while the worker generates, pass/fail per target"),
    out: Path = typer.Option(Path("artifacts/bench/serve/results.json")),
):
    """Loopback load on /v1/score and /v1/recommend: p50/p99 per concurrency, and the throughput where p99 < 10 ms."""
    from reasonrec.bench.serve_load import build_bench_bundle, run_issue_bench, run_serve_bench

    if bundle is None:
        bundle = build_bench_bundle(out.parent / "bundle")
    if issue:
        run_issue_bench(bundle, levels=tuple(int(x) for x in levels.split(",")), max_requests=max_requests,
                        max_seconds=max_seconds, candidates=candidates, out=out, echo=typer.echo)
        return
    run_serve_bench(bundle, levels=tuple(int(x) for x in levels.split(",")), max_requests=max_requests,
                    max_seconds=max_seconds, candidates=candidates, endpoints=tuple(endpoints.split(",")),
                    server_args=tuple(server_arg), out=out, echo=typer.echo)


@bench_app.command("prepare")
def bench_prepare(
    rows: int = typer.Option(20_000_263, help="ratings (ML-20M: 20,000,263)"),
    users: int = typer.Option(138_493), items: int = typer.Option(26_744), seed: int = typer.Option(0),
    out: Path = typer.Option(Path("artifacts/bench/prepare"), help="the synthetic dump (kept and reused), "
                                                                   "the prepared output and results.json"),
):
    """Time `reasonrec data prepare` (wall, peak RSS) on a synthetic ML-20M-layout ratings.csv; making the file is not timed."""
    from reasonrec.bench.prepare_bench import run_prepare_bench

    typer.echo(json.dumps(run_prepare_bench(out, rows=rows, users=users, items=items, seed=seed), indent=2))


cache_app = typer.Typer(help="Share and inspect the explanation store.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("export")
def cache_export(out: Path, store: Path = typer.Option(Path("artifacts/store/explanations.sqlite")),
                 model_id: Optional[str] = typer.Option(None, help="only rows of this model")):
    """Write the store (or one model's rows) to a compressed Parquet file."""
    from reasonrec.explain.store import ExplanationStore

    n = ExplanationStore(store).export_parquet(out, model_id)
    typer.echo(f"exported {n:,} rows to {out} ({out.stat().st_size / 1e6:.1f} MB)")


@cache_app.command("import")
def cache_import(src: Path, store: Path = typer.Option(Path("artifacts/store/explanations.sqlite"))):
    """Add the rows of an exported Parquet file to the store (existing rows are kept)."""
    from reasonrec.explain.store import ExplanationStore

    typer.echo(f"imported {ExplanationStore(store).import_parquet(src):,} rows (new, or replacing failed ones) into {store}")


@cache_app.command("stats")
def cache_stats(store: Path = typer.Option(Path("artifacts/store/explanations.sqlite"))):
    """Rows per model, task and status; prompt and completion tokens per model and task."""
    from reasonrec.explain.store import ExplanationStore

    df = ExplanationStore(store).frame()
    if df.empty:
        typer.echo("the store is empty")
        return
    typer.echo(df.groupby(["model_id", "task", "status"]).size().to_string())
    tokens = df.groupby(["model_id", "task"]).agg(rows=("key", "size"), prompt_mean=("prompt_tokens", "mean"),
                                                  prompt_p95=("prompt_tokens", lambda t: t.quantile(0.95)),
                                                  completion_mean=("tokens", "mean"))
    typer.echo("\n" + tokens.round(1).to_string())




@bench_app.command("run")
def bench_run(
    spec: Path = typer.Argument(..., help="a spec file, e.g. benchmarks/specs/paper.yaml"),
    only: list[str] = typer.Option([], "--only", help="run only these experiment ids (repeatable)"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds, overriding the spec's"),
    strict: bool = typer.Option(False, help="stop at the first missing explanations or failed run"),
    results: Optional[Path] = typer.Option(None, help="results root [default: the spec's, benchmarks/results]"),
    encoder_cache: Path = typer.Option(Path("artifacts/cache/bench-encoders"),
                                       help="fitted text encoders, reused across seeds, tasks and invocations"),
    report: bool = typer.Option(True, help="regenerate the report afterwards"),
    progress: bool = typer.Option(False, help="progress bars inside each fit"),
):
    """Run a spec's experiments x tasks x seeds; finished runs are cached and skipped."""
    from reasonrec.bench.render import build_report
    from reasonrec.bench.run import BenchRunner
    from reasonrec.bench.spec import load_spec

    s = load_spec(spec, {"results": str(results)} if results else None)
    counts = BenchRunner(s, strict=strict, progress=progress, encoder_cache=encoder_cache).run(only or None,
                                                                                              _parse_seeds(seeds))
    if report and counts["rows"]:
        typer.echo(f"report: {build_report(s.results_dir, s.report_dir, s.claims)}")
    if counts["failed"]:
        raise typer.Exit(1)


@bench_app.command("parity")
def bench_parity(
    models: str = typer.Option("all", help="comma-separated models, or all (the zoo and LR-Recsys)"),
    seeds: str = typer.Option("0,1,2"),
    data: Path = typer.Option(Path("artifacts/data/ml-100k"), help="prepared full ML-100K (made if missing)"),
    out: Path = typer.Option(Path("benchmarks/parity"), help="results.csv and REPORT.md"),
    export: Path = typer.Option(Path("artifacts/parity/recbole"), help="RecBole atomic files of the same split"),
    set_: list[str] = typer.Option([], "--set", help="config overrides for every model, KEY=VALUE"),
    progress: bool = typer.Option(False),
):
    """Every model without explanations at its defaults on full ML-100K, over seeds, plus the split as
    RecBole atomic files (docs/parity.md runs RecBole on them). Resumable: finished fits are kept."""
    import pandas as pd

    from reasonrec.bench.parity import export_recbole, render, run_parity
    from reasonrec.data.prepare import PrepareConfig, load_prepared, prepare
    from reasonrec.data.readers import read
    from reasonrec.models.base import MODELS

    if not (data / "samples.parquet").is_file():
        prepare(read("ml-100k", None), PrepareConfig()).save(data)
    prepared = load_prepared(data)
    typer.echo(f"RecBole atomic files: {export_recbole(prepared, export, data.name + '-reasonrec')}")
    names = list(MODELS) if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    frame = run_parity(prepared, names, _parse_seeds(seeds), out, _parse_sets(set_), progress, typer.echo)
    peers = out / "recbole.csv"
    command = "reasonrec bench parity " + " ".join(sys.argv[3:])
    report = render(frame, pd.read_csv(peers) if peers.is_file() else None, out, prepared.card, command)
    typer.echo(f"report: {report}")


@bench_app.command("report")
def bench_report(
    spec: Optional[str] = typer.Option(None, help="spec name (or spec file); default: every spec with results"),
    results: Path = typer.Option(Path("benchmarks/results"), help="results root"),
    out: Path = typer.Option(Path("benchmarks"), help="reports go to OUT/<spec>/REPORT.md (+ figures/)"),
):
    """Regenerate benchmarks/<spec>/REPORT.md and its figures from the results alone (no training)."""
    from reasonrec.bench.render import build_report

    if spec and spec.endswith((".yaml", ".yml")):
        from reasonrec.bench.spec import load_spec

        s = load_spec(spec)
        names, results, out, claims = [s.name], s.results_root, s.report_root, s.claims
    else:
        names = [spec] if spec else sorted(p.parent.name for p in results.glob("*/results.csv"))
        claims = None          # the claims in each spec.json
    if not names:
        raise ReasonrecError(f"no results under {results}; run `reasonrec bench run SPEC.yaml` first")
    for name in names:
        typer.echo(f"wrote {build_report(results / name, out / name, claims)}")


@bench_app.command("plan")
def bench_plan(spec: Path = typer.Argument(..., help="a spec file"),
               only: list[str] = typer.Option([], "--only", help="only these experiment ids"),
               seeds: Optional[str] = typer.Option(None, help="comma-separated seeds, overriding the spec's")):
    """Runs to do (tuning runs included), explanation coverage per experiment and the `reasonrec
    explain` commands for what is missing."""
    from reasonrec.bench.run import BenchRunner
    from reasonrec.bench.spec import load_spec

    runner = BenchRunner(load_spec(spec), echo=typer.echo)
    runs = runner.plan(only or None, _parse_seeds(seeds))
    n_grid = sum(r.grid for r in runs)
    typer.echo(f"{len(runs)} runs over {len({r.exp.id for r in runs})} experiments: {n_grid} tuning runs (the "
               f"first seed at every grid point) + {len(runs) - n_grid} more (the other seeds at the chosen point)"
               if n_grid else f"{len(runs)} runs over {len({r.exp.id for r in runs})} experiments")
    todo: dict[str, str] = {}
    for row in runner.explanation_plan(only or None):
        cov = "missing" if row["coverage"] is None else f"{row['coverage']:.1%}"
        typer.echo(f"{'ready' if row['ready'] else 'TODO '}  {row['id']:<28} slice {row['slice']:<6} "
                   f"{row['samples']:>6,} samples  {row['llm']:<9} {row['variant']:<14}"
                   f"{'' if row['profiles'] else ' no-profiles'} coverage {cov}")
        if not row["ready"]:
            todo[row["command"]] = f"{row['prompts']:,} prompts" + (" + item profiles" if row["profiles"] else "")
    if todo:
        typer.echo("\nto generate what is missing (each resumes where it stopped):")
        for command, size in todo.items():
            typer.echo(f"  {command}    # {size}")


@app.command("insights")
def insights(
    item: str = typer.Option(..., help="item id"),
    dataset: str = typer.Option("ml-100k-bench", help="prepared dataset directory or name under artifacts/data/"),
    llm: str = typer.Option("embedded", help="whose explanations to read (embedded | gemma3 | gguf:/path | ...)"),
    variant: str = typer.Option("contrastive", help="a variant with positive/negative texts"),
    profiles: bool = typer.Option(True, help="explanations written with item profiles"),
    top: int = typer.Option(10, help="keywords per side"),
    store: Path = typer.Option(Path("artifacts/store/explanations.sqlite")),
):
    """Top distinctive keywords of the positive and negative explanations about one item."""
    from reasonrec.bench.insights import format_keywords, insights_for, profiles_of
    from reasonrec.data.prepare import load_prepared
    from reasonrec.pipeline import store_reader

    if not store.is_file():
        raise ReasonrecError(f"no explanation store at {store}; run `reasonrec explain` or `reasonrec cache import`")
    data = load_prepared(_dataset_dir(dataset))
    if str(item) not in set(data.samples["item_id"].astype(str)):
        raise ReasonrecError(f"item '{item}' has no samples in {dataset}")
    explainer = store_reader(data, llm, variant, profiles, store)
    table = explainer.lookup(data.samples, data.items)
    profile = profiles_of(explainer, data.items, [item]) if profiles else None
    found = insights_for(data.samples, data.items, table, [item], top,
                         strip_prefixes=explainer.templates.strip_prefixes(variant), profiles=profile)
    if not found[0]["explained"]:
        raise ReasonrecError(f"no '{variant}' explanations of item {item} from {explainer.model_id} in {store}; "
                             f"generate them with `reasonrec explain --dataset {dataset} --llm {llm} --variant {variant}"
                             f"{'' if profiles else ' --no-profiles'}`")
    typer.echo(format_keywords(found[0]))


@app.command("align")
def align_cmd(
    dataset: str = typer.Option("ml-100k-bench", help="prepared dataset directory or name under artifacts/data/"),
    stages: str = typer.Option("all", help="comma-separated: ctr, lc, ic, generate, evaluate, aug, report | all"),
    out: Optional[Path] = typer.Option(None, help="run directory (state, checkpoints) [default: artifacts/align/<dataset>]"),
    store: Path = typer.Option(Path("artifacts/store/explanations.sqlite"), help="the explanation store"),
    bench_dir: Path = typer.Option(Path("benchmarks/expctr"), help="where the report stage writes curves and tables"),
    config: Optional[Path] = typer.Option(None, help="a JSON AlignConfig [default: the run directory's config.json "
                                                     "when it exists]; the options below override it"),
    users: Optional[int] = typer.Option(None, help="sub-slice of users for generation and ExpCTR-Aug [default 150]; "
                                                   "0 = all"),
    rl_samples: Optional[int] = typer.Option(None, help="train samples used as RL prompts (x2 tasks) [128]"),
    steps_lc: Optional[int] = typer.Option(None, help="GRPO steps of stage 2 (LC) [36]"),
    steps_ic: Optional[int] = typer.Option(None, help="GRPO steps of stage 3 (IC + LC) [36]"),
    rounds: Optional[int] = typer.Option(None, help="iterations of the three stages [1]"),
    prompts_per_step: Optional[int] = typer.Option(None, help="[8]"),
    group_size: Optional[int] = typer.Option(None, help="completions per prompt [4]"),
    max_new_tokens: Optional[int] = typer.Option(None, help="RL completion length [40]"),
    lr: Optional[float] = typer.Option(None), beta: Optional[float] = typer.Option(None, help="KL weight (> 0)"),
    temperature: Optional[float] = typer.Option(None),
    lora_targets: Optional[str] = typer.Option(None, help="all-linear | attention"),
    lora_r: Optional[int] = typer.Option(None),
    w_lc: Optional[float] = typer.Option(None, help="LC weight in stage 3 (stage 2 uses LC only)"),
    w_ic: Optional[float] = typer.Option(None, help="IC weight in stage 3"),
    w_fmt: Optional[float] = typer.Option(None, help="format weight, both stages"),
    ic_kind: Optional[str] = typer.Option(None, help="kl | sq"),
    backbone: Optional[str] = typer.Option(None, help="the ID-based CTR model from the zoo [deepfm]"),
    encoder: Optional[str] = typer.Option(None, help="ExpCTR-Aug text encoder [autoencoder]"),
    seeds: Optional[str] = typer.Option(None, help="ExpCTR-Aug seeds [0,1,2,3,4]"),
    threads: Optional[int] = typer.Option(None, help="torch threads (1 is often faster on a busy 2-core machine)"),
    progress: bool = typer.Option(True),
):
    """ExpCTR: align the explanation generator with LoRA + GRPO on LC / IC rewards (resumable)."""
    from dataclasses import replace

    from reasonrec.align.loop import AlignConfig, run_align

    path = _dataset_dir(dataset)
    out = out or Path("artifacts") / "align" / path.name
    saved = config or (out / "config.json" if (out / "config.json").is_file() else None)
    # a run directory keeps its settings: resuming needs only the options that change
    cfg = AlignConfig.from_dict(json.loads(saved.read_text())) if saved else AlignConfig()
    top = {"dataset": str(path), "out": str(out), "store": str(store),
           "bench_dir": str(bench_dir), "rl_samples": rl_samples, "steps_lc": steps_lc, "steps_ic": steps_ic,
           "rounds": rounds, "backbone": backbone, "encoder": encoder, "threads": threads}
    cfg = replace(cfg, **{k: v for k, v in top.items() if v is not None})
    if users is not None:
        cfg.users = None if users == 0 else users
    if seeds:
        cfg.seeds = tuple(_parse_seeds(seeds))
    grpo = {"prompts_per_step": prompts_per_step, "group_size": group_size, "max_new_tokens": max_new_tokens,
            "lr": lr, "beta": beta, "temperature": temperature}
    cfg.grpo = replace(cfg.grpo, **{k: v for k, v in grpo.items() if v is not None})
    cfg.lora = replace(cfg.lora, **{k: v for k, v in {"targets": lora_targets, "r": lora_r,
                                                       "alpha": 2 * lora_r if lora_r else None}.items() if v is not None})
    cfg.weights_ic = replace(cfg.weights_ic, **{k: v for k, v in {"lc": w_lc, "ic": w_ic, "fmt": w_fmt,
                                                                   "ic_kind": ic_kind}.items() if v is not None})
    if w_fmt is not None or ic_kind is not None:
        cfg.weights_lc = replace(cfg.weights_lc, **{k: v for k, v in {"fmt": w_fmt, "ic_kind": ic_kind}.items()
                                                    if v is not None})
    state = run_align(cfg, [s.strip() for s in stages.split(",") if s.strip()], echo=typer.echo, progress=progress)
    typer.echo(json.dumps({k: v for k, v in state.items() if k.endswith(("ctr", "lc", "ic", "aug"))}, indent=2,
                          default=str))


def main():
    try:
        app()
    except ReasonrecError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
