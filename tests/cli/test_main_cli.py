"""The ``persona`` CLI end to end in a subprocess: exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, needs_mirror


def persona(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("persona ")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_dataset(tmp_path):
    _one_line_error(persona("prepare", "dataset=ml-20m", f"data.workdir={tmp_path}"), "unknown dataset 'ml-20m'")


def test_missing_mirror(tmp_path):
    proc = persona("prepare", f"data.mirror={tmp_path / 'nope'}", f"data.workdir={tmp_path}")
    _one_line_error(proc, "data mirror directory not found", "nope")


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("user,item\nu,i\n", [], "missing column 'timestamp'"),
        ("", [], "empty file"),
        ("user,item,timestamp\nu,i,monday\nu,j,tuesday\n", [], "column 'timestamp' line 2: not a number"),
        ("user,item,timestamp\nu,i,0\nu,j,1\n", ["--protocol", "time"], "unknown --protocol 'time'"),
    ],
)
def test_malformed_csv(tmp_path, content, extra, message):
    """Synthetic bad CSVs (and a bad --protocol): one-line error, exit 2, nothing written."""
    csv = tmp_path / "x.csv"
    csv.write_text(content)
    proc = persona("prepare", "--csv", str(csv), "--name", "mine", *extra, f"data.workdir={tmp_path / 'atomic'}")
    _one_line_error(proc, message)
    assert not (tmp_path / "atomic" / "mine").exists()


def test_bad_config_field_is_named(tmp_path):
    _one_line_error(persona("prepare", "train.lr=-1"), "train.lr")
    _one_line_error(persona("prepare", "trian.lr=1"), "trian")
    _one_line_error(persona("train", "model=bert4rec", f"data.workdir={tmp_path}"), "unknown model 'bert4rec'")


def test_evaluate_without_checkpoint_says_what_to_run(tmp_path):
    proc = persona("evaluate", "--models", "sasrec", f"output_dir={tmp_path}", f"data.workdir={tmp_path / 'a'}")
    _one_line_error(proc, "persona train model=sasrec")
    _one_line_error(persona("export", f"output_dir={tmp_path}"), "no complete checkpoint")


@needs_mirror
@pytest.mark.timeout(1500)
def test_run_end_to_end_on_a_small_real_dataset(tmp_path):
    proc = persona(
        "run",
        "--quiet",
        "dataset=amazon-scientific",
        "seeds=[0,1]",
        "train.epochs=2",
        f"output_dir={tmp_path / 'runs'}",
        f"reports_dir={tmp_path / 'reports'}",
        f"data.workdir={tmp_path / 'atomic'}",
        timeout=1200,  # a hang guard, not a speed check: encoding + 2 models x 2 seeds take minutes on a busy CPU
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| popularity | 2 |" in proc.stdout and "| sasrec | 2 |" in proc.stdout and "| gru4rec | 2 |" in proc.stdout
    report = json.loads((tmp_path / "reports" / "amazon-scientific" / "base.json").read_text())
    assert len(report["runs"]["sasrec"]) == 2 and "ndcg@10" in report["summary"]["gru4rec"]
    ckpt = tmp_path / "runs" / "amazon-scientific" / "sasrec" / "seed1"
    assert {p.name for p in ckpt.iterdir()} == {"model.pt", "model.yaml", "items.txt", "manifest.json"}
    assert (ckpt.parent / "seed0" / "item-delta.json").is_file()  # the served checkpoint's, taught by all four
    # the device's copy: the LLM item view folded into the item table (ID-only sized, same scores: test_item_side)
    export = persona("export", "dataset=amazon-scientific", "model=sasrec", "seeds=[0,1]",
                     f"output_dir={tmp_path / 'runs'}", f"data.workdir={tmp_path / 'atomic'}")
    assert export.returncode == 0, export.stderr[-2000:]
    assert (ckpt / "device" / "model.pt").stat().st_size < 0.8 * (ckpt / "model.pt").stat().st_size


@pytest.mark.parametrize("cmd", ["prepare", "train", "evaluate", "run", "export"])
def test_help(cmd):
    assert persona(cmd, "--help").returncode == 0


@needs_mirror
def test_train_without_side_file_says_what_to_run(tmp_path):
    proc = persona("train", "model=sasrec", "model_params.item_side=fused", f"data.item_side={tmp_path / 'no.npz'}",
                   f"output_dir={tmp_path}", f"data.workdir={tmp_path / 'a'}")
    _one_line_error(proc, "no item side file", "persona codebook")


def test_config_prints_the_resolved_yaml(tmp_path, capsys):
    from serving.cli import main
    from serving.config import load_app_config

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
    _one_line_error(persona("config", "serve.nope=1"), "persona config: error: config field 'serve.nope'")


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--role", "device", "--host", "0.0.0.0"], {}, "serve.operator_key"),
        (["--role", "all", "--host", "0.0.0.0"], {}, "serve.api_key"),
        (["--role", "cloud", "--host", "192.0.2.7"], {}, "serve.api_key"),
        (["--role", "device", "--host", "0.0.0.0"], {"PERSONA_OPERATOR_KEY": "k"}, "serve.http.allowed_hosts"),
    ],
)
def test_serve_refuses_an_open_bind_without_credentials(tmp_path, args, env, setting):
    """Before anything loads: no checkpoint is needed to be refused (docs/security.md)."""
    clean = {"PERSONA_API_KEY": "", "PERSONA_OPERATOR_KEY": "", **env}
    proc = persona("serve", *args, f"serve.checkpoint={tmp_path / 'none'}", env=clean, timeout=60)
    _one_line_error(proc, setting)
