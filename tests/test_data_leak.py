"""No item or user feature may depend on a validation or test interaction: rewrite only the held-out
reviews (their aspects, ratings, inline text) and the prepared items/users tables must not move."""

from __future__ import annotations

import pickle

import pandas as pd
from pandas.testing import assert_frame_equal

from reasonrec.data.prepare import prepare
from reasonrec.data.readers import read

HELD_OUT = ("valid", "test")


def peter(user, item, rating, aspect):
    return {"user": user, "item": item, "rating": rating, "template": (aspect, "good", f"the {aspect}", 1)}


def reviews() -> list[dict]:
    out = []
    for u in range(6):
        for k, hotel in enumerate(("h1", "h2", "h3", "h1", "h2", "h3", "h1", "h2", "h3", "h1")):
            out.append(peter(f"u{u}", hotel, 1 + (u + k) % 5, ("room", "staff", "pool")[(u * k) % 3]))
    return out


def held_out_positions(records: list[dict], prepared) -> list[int]:
    """File positions (0-based) of the validation/test interactions; PETER lines are positions + 1."""
    held = prepared.samples[prepared.samples["split"].isin(HELD_OUT)]
    assert len(held) and len(prepared.samples) == len(records)
    # samples keep the reader's timestamp, which for a pickle is the 1-based record position
    return sorted(int(t) - 1 for t in held["timestamp"])


def test_tripadvisor_items_ignore_held_out_reviews(tmp_path):
    records = reviews()
    f = tmp_path / "reviews.pickle"
    f.write_bytes(pickle.dumps(records))
    before = prepare(read("tripadvisor", f))
    changed = [dict(r) for r in records]
    for pos in held_out_positions(records, before):
        changed[pos] = peter(changed[pos]["user"], changed[pos]["item"], 5, "casino")  # a term no train review has
    f.write_bytes(pickle.dumps(changed))
    after = prepare(read("tripadvisor", f))
    assert (after.samples["rating"] != before.samples["rating"]).any()  # the rewrite did reach the data
    assert after.samples["split"].tolist() == before.samples["split"].tolist()
    assert_frame_equal(before.items, after.items)
    assert_frame_equal(before.users, after.users)
    assert "casino" not in " ".join(after.items["categories"])
    # and the terms that are there are the training ones: h1's top term among its train reviews
    train = [records[int(t) - 1] for t in before.samples.query("split == 'train'")["timestamp"]]
    h1 = pd.Series([r["template"][0] for r in train if r["item"] == "h1"]).value_counts()
    assert before.items.set_index("item_id").loc["h1", "categories"].split(", ")[0] == h1.index[0]


def test_csv_inline_item_text_comes_from_training_rows(tmp_path):
    # newest first in the file, so "first value per item" would pick a held-out row if it looked at all rows
    rows = [(u, item, t) for u in ("u1", "u2", "u3") for t, item in enumerate(("a", "b", "c", "a", "b"))][::-1]

    def table(title_of) -> str:
        lines = ["user_id,item_id,rating,timestamp,title"]
        lines += [f"{u},{i},4,{1600000000 + 3600 * t},{title_of(u, i, t)}" for u, i, t in rows]
        return "\n".join(lines) + "\n"

    f = tmp_path / "log.csv"
    f.write_text(table(lambda u, i, t: f"Title {i}"))
    before = prepare(read("csv", f))
    held = set(zip(before.samples.query("split != 'train'")["user_id"],
                   before.samples.query("split != 'train'")["timestamp"]))
    f.write_text(table(lambda u, i, t: "LEAK" if (u, 1600000000 + 3600 * t) in held else f"Title {i}"))
    after = prepare(read("csv", f))
    assert_frame_equal(before.items, after.items)
    assert_frame_equal(before.users, after.users)
    assert set(after.items["title"]) == {"Title a", "Title b", "Title c"}
