"""The `reasonrec align` command and the loop's entry checks (fast: no model is loaded)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from reasonrec.align.loop import AlignConfig, AlignRun
from reasonrec.cli import app
from reasonrec.errors import ReasonrecError


def test_align_command_is_wired():
    result = CliRunner().invoke(app, ["align", "--help"])
    assert result.exit_code == 0
    for option in ("--stages", "--steps-lc", "--steps-ic", "--lora-targets", "--w-ic", "--users"):
        assert option in result.output


def test_unknown_stages_are_refused_before_any_work(tmp_path):
    run = AlignRun(AlignConfig(out=str(tmp_path / "run"), bench_dir=None), echo=lambda *a: None, progress=False)
    with pytest.raises(ReasonrecError, match="unknown stage"):
        run.run(["ctr", "ppo"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lora"]["targets"] == "attention"


def test_rl_stage_needs_its_ctr_model(tmp_path):
    run = AlignRun(AlignConfig(out=str(tmp_path / "run"), bench_dir=None), echo=lambda *a: None, progress=False)
    with pytest.raises(ReasonrecError, match="needs stage ctr"):
        run.stage_rl(1, "lc")


def test_config_roundtrips_through_json(tmp_path):
    cfg = AlignConfig(users=12, seeds=(1, 2))
    cfg.grpo.lr = 1e-3
    cfg.weights_ic.ic = 2.0
    again = AlignConfig.from_dict(json.loads(json.dumps(__import__("dataclasses").asdict(cfg))))
    assert again == cfg
