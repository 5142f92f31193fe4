"""The `reasonrec` command line: a thin typer layer over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from reasonrec.errors import ReasonrecError

app = typer.Typer(help="LLM-reasoning-powered, explainable CTR and rating prediction.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read raw datasets into the samples schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _parse_columns(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected OURS=THEIRS, got {pair!r}", param_hint="--col")
        ours, theirs = pair.split("=", 1)
        out[ours.strip()] = theirs.strip()
    return out


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
):
    """Read a dataset, split it per user by time, and write samples/items/users Parquet + a dataset card."""
    from reasonrec.data.prepare import PrepareConfig, prepare
    from reasonrec.data.readers import read

    options = {"skip_bad_rows": skip_bad_rows}
    if dataset == "csv":
        options["columns"] = _parse_columns(col)
        if domain:
            options["domain"] = domain
    raw = read(dataset, path, **options)
    cfg = PrepareConfig(test_frac=test_frac, valid_frac=valid_frac, label_threshold=label_threshold,
                        max_users=max_users, last_n_per_user=last_n_per_user, seed=seed, skip_bad_rows=skip_bad_rows)
    prepared = prepare(raw, cfg)
    target = prepared.save(out or Path("artifacts") / "data" / dataset)
    typer.echo((target / "card.md").read_text())
    typer.echo(f"wrote {target}/samples.parquet, items.parquet, users.parquet, card.json")


@data_app.command("show")
def data_show(path: Path = typer.Argument(Path("artifacts/data/ml-100k"), help="a prepared dataset directory"),
              as_json: bool = typer.Option(False, "--json")):
    """Print the dataset card of a prepared dataset."""
    card = path / ("card.json" if as_json else "card.md")
    if not card.is_file():
        raise ReasonrecError(f"{path}: no dataset card; run `reasonrec data prepare` first")
    typer.echo(card.read_text())


def main():
    try:
        app()
    except ReasonrecError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
