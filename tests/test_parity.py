"""`reasonrec bench parity`: fits are resumed, a fit whose defaults changed is refitted, and the
split is exported as RecBole atomic files with exactly the prepared rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reasonrec.bench.parity import export_recbole, run_parity
from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read


@pytest.fixture(scope="module")
def small():
    return prepare(read("ml-100k"), PrepareConfig(max_users=60, last_n_per_user=20))


def test_a_stored_fit_is_kept_and_a_stale_one_refitted(small, tmp_path):
    messages = []
    run_parity(small, ["ncf"], [0], tmp_path, overrides={"epochs": 1}, echo=messages.append)
    assert len(messages) == 1
    run_parity(small, ["ncf"], [0], tmp_path, overrides={"epochs": 1}, echo=messages.append)
    assert len(messages) == 1                                   # kept: nothing ran

    stored = pd.read_csv(tmp_path / "results.csv")
    config = json.loads(stored.loc[0, "config"])
    config["train"].pop("weight_decay")                         # an option added since: its field default
    stored.loc[0, "config"] = json.dumps(config, sort_keys=True)
    stored.to_csv(tmp_path / "results.csv", index=False)
    run_parity(small, ["ncf"], [0], tmp_path, overrides={"epochs": 1}, echo=messages.append)
    assert len(messages) == 1                                   # is what the fit had: kept

    config["dropout"] = 0.55                                    # as if the default had been different then
    stored.loc[0, "config"] = json.dumps(config, sort_keys=True)
    stored.to_csv(tmp_path / "results.csv", index=False)
    out = run_parity(small, ["ncf"], [0], tmp_path, overrides={"epochs": 1}, echo=messages.append)
    assert "defaults changed" in messages[1] and len(messages) == 3
    assert len(out) == 1 and json.loads(out.loc[0, "config"])["dropout"] != 0.55


def test_the_recbole_export_holds_every_prepared_row(small, tmp_path):
    target = export_recbole(small, tmp_path)
    for split in ("train", "valid", "test"):
        inter = pd.read_csv(target / f"reasonrec.{split}.inter", sep="\t")
        part = small.samples[small.samples["split"] == split]
        assert len(inter) == len(part)
        assert inter["label:float"].sum() == pytest.approx(part["label"].sum())
    assert len(pd.read_csv(target / "reasonrec.user", sep="\t")) == len(small.users)
