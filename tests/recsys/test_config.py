"""recsys's own config loader: the typed defaults, the layers in the packaged config folder, unknown keys
named, ``$PERSONA_CONFIG_DIR``, and the config files shipped as package data of ``recsys``."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from recsys.config import CONFIG_DIR, ConfigError, PersonaConfig, load_config, user_file_path

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_come_from_the_typed_models():
    cfg = load_config()
    assert isinstance(cfg, PersonaConfig) and (cfg.dataset, cfg.model) == ("ml-100k", "sasrec")
    assert cfg.model_dump(exclude={"data"}) == PersonaConfig().model_dump(exclude={"data"})  # sasrec.yaml = defaults
    assert not (Path(str(files("recsys") / "configs")) / "default.yaml").exists()  # no second copy of the defaults


def test_layers_in_order(tmp_path):
    beauty = load_config(overrides=["dataset=amazon-beauty"])
    assert (beauty.data.protocol, beauty.train.batch_size) == ("order", 128)  # datasets/amazon-beauty.yaml
    gru = load_config(overrides=["model=gru4rec"])
    assert (gru.model_params.n_layers, gru.train.lr) == (1, 0.003)  # models/gru4rec.yaml
    user = tmp_path / "run.yaml"
    user.write_text("dataset: amazon-beauty\ntrain: {batch_size: 7, lr: 0.01}\n")
    cfg = load_config(str(user), ["train.lr=0.02"])
    assert (cfg.data.protocol, cfg.train.batch_size, cfg.train.lr) == ("order", 7, 0.02)  # user file, then key=value


def test_unknown_and_foreign_keys_are_named():
    with pytest.raises(ConfigError, match="config field 'train.nope'"):
        load_config(overrides=["train.nope=1"])
    with pytest.raises(ConfigError, match="config field 'serve'"):  # serving's section, not recsys's
        load_config(overrides=["serve.port=1"])
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_user_file_falls_back_to_the_config_folder():
    assert user_file_path("models/gru4rec.yaml") == CONFIG_DIR / "models" / "gru4rec.yaml"
    assert load_config("models/gru4rec.yaml").train.lr == 0.003


def test_config_dir_env_override(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "ml-100k.yaml").write_text("train: {epochs: 3}\n")
    code = "from recsys.config import CONFIG_DIR, load_config; print(CONFIG_DIR, load_config().train.epochs)"
    env = {**os.environ, "PERSONA_CONFIG_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(tmp_path), "3"]


def test_recsys_imports_nothing_of_the_other_packages():
    ours = {"serving", "llm_cloud", "codebook"}
    for path in (ROOT / "recsys").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not {n.split(".")[0] for n in names} & ours, f"{path.relative_to(ROOT)} imports {names}"


def test_config_files_are_package_data(tmp_path):
    shipped = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
    assert {"datasets/ml-100k.yaml", "models/sasrec.yaml", "backbones/minilm.yaml"} <= set(shipped)
    if "PERSONA_CONFIG_DIR" not in os.environ:
        assert CONFIG_DIR == Path(str(files("recsys") / "configs"))
    # a real wheel of the project (recsys alone is enough to see its package data)
    src = tmp_path / "src"
    shutil.copytree(ROOT / "recsys", src / "recsys", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(tmp_path / "dist"), str(src)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packed = {n.removeprefix("recsys/configs/") for n in zf.namelist() if n.startswith("recsys/configs/")}
        assert sorted(packed) == shipped
        assert yaml.safe_load(zf.read("recsys/configs/datasets/amazon-beauty.yaml"))["data"]["protocol"] == "order"
