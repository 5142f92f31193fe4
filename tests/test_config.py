"""The one typed configuration: layering, presets, errors that name the key, bundles that keep it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from reasonrec.config import RecommenderConfig, TrainConfig, resolve
from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.errors import ReasonrecError
from reasonrec.estimator import Recommender
from reasonrec.models.lr_recsys import PRESETS


def test_layers_resolve_in_order():
    base = resolve(model="deepfm")
    assert base.train.lr == TrainConfig().lr and base.embed_dim == RecommenderConfig().embed_dim
    ncf = resolve(model="ncf")
    assert ncf.init_std != RecommenderConfig().init_std          # NCF's own DEFAULTS beside the model
    assert resolve(model="ncf", init_std=0.05).init_std == 0.05   # the caller wins over the model
    faithful = resolve(model="lr-recsys", preset="faithful")
    assert (faithful.train.lr, faithful.train.batch_size, faithful.embed_dim) == (0.01, 128, 8)
    assert faithful.side_features is False and faithful.extra["residual"] is False
    assert resolve(model="lr-recsys", preset="faithful", lr=0.02).train.lr == 0.02   # and over the preset
    # a caller's knob adds to the preset's knobs instead of replacing them
    assert resolve(model="lr-recsys", preset="faithful", extra={"gmf": True}).extra == {"residual": False, "gmf": True}
    # the preset spells only what the paper fixes; nothing else leaks into it
    assert set(PRESETS["faithful"]) <= set(RecommenderConfig.model_fields)


def test_every_model_gets_the_same_inputs_by_default():
    from reasonrec.models.base import MODELS

    inputs = {(resolve(model=m).side_features, resolve(model=m).pooled_history) for m in MODELS}
    assert len(inputs) == 1


@pytest.mark.parametrize("bad, named", [({"dropuot": 0.1}, "dropuot"), ({"train": {"learning_rate": 1}}, "learning_rate"),
                                        ({"monitor": "accuracy"}, "monitor"), ({"preset": "paper"}, "paper"),
                                        ({"model": "xgboost"}, "xgboost"), ({"extra": {"gmff": False}}, "gmff")])
def test_a_wrong_key_or_value_is_an_error_that_names_it(bad, named):
    with pytest.raises(ReasonrecError, match=named):
        resolve({"model": "lr-recsys", **bad})


@pytest.mark.parametrize("model, knob, other", [("apg", "rank", 4), ("bert4rec", "layers", 1), ("dcnv2", "cross_layers", 1),
                                                ("din", "attention_hidden", 8), ("ncf", "tower", (16, 8)),
                                                ("optfusion", "layers", 1), ("sasrec", "layers", 1)])
def test_a_models_knobs_are_the_ones_it_reads(model, knob, other):
    from reasonrec.models.base import ModelConfig, build_model, model_module

    knobs = model_module(model).KNOBS
    assert resolve(model=model, extra=knobs).extra == knobs
    with pytest.raises(ReasonrecError, match=f"no extra knob.*{knob}x"):
        resolve(model=model, extra={knob + "x": 1})

    def shapes(extra):
        return [tuple(p.shape) for p in build_model(model, ModelConfig(n_users=5, n_items=7, extra=extra)).parameters()]
    # spelling a knob at its default builds the default network; another value builds another one
    assert shapes({}) == shapes(knobs) != shapes({knob: other})


def test_the_estimator_and_the_cli_go_through_the_same_config(tmp_path):
    from reasonrec.cli import app

    with pytest.raises(ReasonrecError, match="dropuot"):
        Recommender(model="deepfm", dropuot=0.3)
    with pytest.raises(ReasonrecError, match="resolve"):          # a preset on top of a resolved config
        Recommender(resolve(model="lr-recsys"), preset="faithful")
    data = prepare(read("ml-100k"), PrepareConfig(max_users=30, last_n_per_user=10)).save(tmp_path / "d")
    out = CliRunner().invoke(app, ["train", "--dataset", str(data), "--model", "ncf", "--without-explanations",
                                   "--set", "dropuot=0.3", "--no-progress"])
    assert out.exit_code != 0 and "dropuot" in str(out.exception or out.output)
    out = CliRunner().invoke(app, ["train", "--dataset", str(data), "--model", "ncf", "--without-explanations",
                                   "--set", "train.epochs=2", "--set", "mlp=[16, 8]", "--no-progress",
                                   "--out", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    saved = json.loads((tmp_path / "m" / "seed-0" / "bundle.json").read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["mlp"] == [16, 8]
    assert saved["init_std"] == resolve(model="ncf").init_std      # the resolved value is what the bundle keeps


def test_a_bundle_from_an_older_version_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "bundle.json").write_text(json.dumps({"bundle_version": 1, "config": {}}))
    with pytest.raises(ReasonrecError, match="bundle version 1"):
        Recommender.load(tmp_path)
