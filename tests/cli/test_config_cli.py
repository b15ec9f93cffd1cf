"""``persona config`` (:mod:`cli.config`): the resolved config printed as YAML that loads back to the same."""

from __future__ import annotations

import argparse

import yaml

from cli import config
from cli.main import main
from serving.config import load_app_config
from tests.conftest import one_line_error, persona


def test_config_prints_the_resolved_yaml(tmp_path, capsys):
    args = ["dataset=amazon-beauty", "serve.port=9000", "backbone=hf"]
    assert main(["config", *args]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("# persona config: typed defaults → ") and "datasets/amazon-beauty.yaml" in header
    printed = yaml.safe_load(out)
    assert printed == load_app_config(None, args).model_dump(mode="json")
    assert (printed["data"]["protocol"], printed["serve"]["port"], printed["backbone"]["name"]) == ("order", 9000, "hf")
    assert {"serve", "backbone", "context", "codebook", "adapter", "prototypes"} <= set(printed)
    (tmp_path / "all.yaml").write_text(out)  # everything spelt out: loading it back gives the same config
    assert load_app_config(str(tmp_path / "all.yaml")) == load_app_config(None, args)
    one_line_error(persona("config", "serve.nope=1"), "persona config: error: config field 'serve.nope'")


def test_header_names_each_layer(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("train:\n  lr: 0.002\n")
    assert config.run(argparse.Namespace(config=str(tmp_path / "mine.yaml"), overrides=["model=gru4rec"])) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(f"models/gru4rec.yaml → {tmp_path / 'mine.yaml'} → key=value"), header
