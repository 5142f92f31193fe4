"""A synthetic MovieLens-20M-layout dump (ratings.csv + movies.csv) for scale benchmarks.

Shaped like the real file where it matters to `prepare`'s cost: skewed item popularity (a Zipf
law, so a few items take most ratings), skewed user activity (log-normal, at least 20 ratings per
user as in ML-20M), half-star ratings 0.5-5, and per-user timestamps that move forward in bursts
with many same-second ties. Rows are written ordered by (userId, movieId) like the real dump, so
`prepare` still has the time sort to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

ML20M_ROWS, ML20M_USERS, ML20M_ITEMS = 20_000_263, 138_493, 26_744
MIN_PER_USER = 20
_START, _END = 789_652_009, 1_427_784_002  # the span of ML-20M's timestamps (1995-01-09 .. 2015-03-31)
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def user_counts(rows: int, users: int, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: log-normal activity, each user at least MIN_PER_USER (or rows // users), summing to rows."""
    floor = min(MIN_PER_USER, rows // users)
    if floor < 1:
        raise ValueError(f"{rows} rows cannot give each of {users} users a rating")
    weights = rng.lognormal(0.0, 1.2, users)
    extra = rows - floor * users
    counts = floor + np.floor(weights / weights.sum() * extra).astype(np.int64)
    # the rounding remainder goes to randomly chosen users, one each, so the total is exact
    short = rows - int(counts.sum())
    counts[rng.choice(users, size=short, replace=False)] += 1
    return counts


def ratings_frame(rows: int, users: int, items: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    counts = user_counts(rows, users, rng)
    user = np.repeat(np.arange(1, users + 1, dtype=np.int32), counts)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    item_ids = rng.permutation(items).astype(np.int32) + 1  # popularity unrelated to the id order
    item = item_ids[rng.choice(items, size=rows, p=popularity / popularity.sum())]
    stars = np.arange(1, 11) / 2
    star_p = np.array([1, 3, 4, 8, 7, 20, 22, 25, 5, 5], dtype=float)  # ML-like: whole stars dominate
    rating = rng.choice(stars, size=rows, p=star_p / star_p.sum())
    # Each user starts somewhere in the span and rates in bursts: half the gaps are 0 s (ties).
    start = rng.integers(_START, _END - 86_400 * 400, size=users)
    gaps = np.where(rng.random(rows) < 0.5, 0, rng.exponential(3_000.0, rows).astype(np.int64) + 1)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gaps[first] = 0
    cum = np.cumsum(gaps)
    stamp = np.repeat(start, counts) + cum - np.repeat(cum[first], counts)
    frame = pl.DataFrame({"userId": user, "movieId": item, "rating": rating, "timestamp": stamp})
    # a repeated (user, movie, second) would be dropped by prepare as a duplicate: move it a second on
    while True:
        dup = frame.select(pl.struct("userId", "movieId", "timestamp").is_first_distinct().not_()).to_series()
        if not dup.any():
            break
        frame = frame.with_columns(pl.when(dup).then(pl.col("timestamp") + 1).otherwise(pl.col("timestamp"))
                                   .alias("timestamp"))
    return frame.sort(["userId", "movieId", "timestamp"])


def movies_frame(items: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed + 1)
    years = rng.integers(1920, 2015, items)
    masks = rng.random((items, len(GENRES))) < 0.12
    genres = ["|".join(g for g, m in zip(GENRES, row) if m) or "(no genres listed)" for row in masks]
    return pl.DataFrame({"movieId": np.arange(1, items + 1), "title": [f"Movie {i} ({y})" for i, y in
                                                                          zip(range(1, items + 1), years)],
                         "genres": genres})


def write_movielens(out: Path, rows: int = ML20M_ROWS, users: int = ML20M_USERS, items: int = ML20M_ITEMS,
                    seed: int = 0) -> Path:
    """Write OUT/ratings.csv and OUT/movies.csv; reuse them when a previous call left the same shape."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / ".synth"
    shape = f"rows={rows} users={users} items={items} seed={seed}\n"
    if stamp.is_file() and stamp.read_text() == shape and (out / "ratings.csv").is_file():
        return out
    stamp.unlink(missing_ok=True)
    ratings = ratings_frame(rows, users, items, seed)
    ratings.write_csv(out / ".ratings.csv.tmp", float_precision=1)
    (out / ".ratings.csv.tmp").replace(out / "ratings.csv")
    del ratings
    movies = movies_frame(items, seed)
    movies.write_csv(out / "movies.csv")
    stamp.write_text(shape)
    return out
