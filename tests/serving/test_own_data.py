"""A user's own CSV through ``persona prepare --csv`` (protocol detected or given, recorded, used by later
configs without a flag; its text columns as LLM item text) and per-dataset serve state. Every CSV here is
a small synthetic file in a tmp dir."""

from __future__ import annotations

from serving.config import load_app_config
from tests.conftest import persona


def _positions_csv(path):
    """Synthetic: 30 users, user k has 3 + k % 6 events at positions 0, 1, 2, ... (titles in a 'title' column)."""
    lines = ["user,item,timestamp,title"]
    for u in range(30):
        for pos in range(3 + u % 6):
            item = (u * 5 + pos * 7) % 40
            lines.append(f"u{u},i{item},{pos},Synthetic item {item}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prepare_csv_detects_order_prints_counts_and_later_configs_use_it(tmp_path):
    csv, workdir = _positions_csv(tmp_path / "events.csv"), tmp_path / "atomic"
    proc = persona("prepare", "--csv", str(csv), "--name", "mine", f"data.workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    rows = sum(3 + u % 6 for u in range(30))
    assert lines[0].startswith(f"mine: 30 users, 40 items, {rows} interactions") and "'title' column" in lines[0]
    assert lines[1].startswith("protocol: order (per-user leave-last-out; detected: ")
    # order: n events give n - 1 targets; the last is a test row, the one before a validation row when the user
    # has three targets or more (here: not the 5 users with 3 events)
    assert lines[2] == f"split: train {rows - 85} rows / 30 users, valid 25 rows / 25 users, test 30 rows / 30 users"
    cfg = load_app_config(overrides=["dataset=mine", f"data.workdir={workdir}"])
    assert cfg.data.protocol == "order"
    assert load_app_config(overrides=["dataset=mine", f"data.workdir={workdir}", "data.protocol=shift"]).data.protocol \
        == "shift"  # an explicit override still wins (with a warning)

    from recsys.datasets import read_items

    assert read_items(workdir / "mine", "mine")["title"].iloc[0] == "Synthetic item 0"


def test_prepare_csv_protocol_flag_overrides_detection(tmp_path):
    csv, workdir = _positions_csv(tmp_path / "events.csv"), tmp_path / "atomic"
    proc = persona("prepare", "--csv", str(csv), "--name", "mine", "--protocol", "shift", f"data.workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "protocol: shift (global time split; given; detected order: " in proc.stdout
    assert load_app_config(overrides=["dataset=mine", f"data.workdir={workdir}"]).data.protocol == "shift"


def test_serve_state_is_per_dataset_by_default(tmp_path):
    paths = {}
    for name in ("ml-100k", "amazon-beauty"):
        cfg = load_app_config(overrides=[f"dataset={name}", f"output_dir={tmp_path}"])
        assert cfg.serve.device.db_path is None and cfg.serve.device.prototype_cache is None
        paths[name] = cfg.serve.device.state_paths(cfg.output_dir, cfg.dataset)
    assert paths["ml-100k"] == (tmp_path / "serve" / "ml-100k" / "events.db",
                                tmp_path / "serve" / "ml-100k" / "prototypes.json")
    assert paths["amazon-beauty"][0] != paths["ml-100k"][0] and paths["amazon-beauty"][1] != paths["ml-100k"][1]
    explicit = [f"serve.device.db_path={tmp_path / 'e.db'}", f"serve.device.prototype_cache={tmp_path / 'p.json'}"]
    cfg = load_app_config(overrides=explicit)
    assert cfg.serve.device.state_paths(cfg.output_dir, cfg.dataset) == (tmp_path / "e.db", tmp_path / "p.json")


def test_device_service_opens_its_datasets_event_log(checkpoint, tmp_path):
    """With no serve.device.db_path / serve.device.prototype_cache, the device keeps its state under
    <output_dir>/serve/<dataset>/."""
    from serving.artifacts import load_artifacts
    from serving.device_app import DeviceService

    ckpt, workdir = checkpoint
    cfg = load_app_config(overrides=[f"serve.checkpoint={ckpt}", f"data.workdir={workdir}", f"output_dir={tmp_path}"])
    service = DeviceService(cfg, load_artifacts(cfg))
    try:
        assert service.store.path == tmp_path / "serve" / "ml-100k" / "events.db" and service.store.path.is_file()
        assert service.cache_path == tmp_path / "serve" / "ml-100k" / "prototypes.json"
    finally:
        service.store.close()


def test_csv_text_columns_make_the_llm_item_text(tmp_path):
    """Synthetic CSV with title and brand: the LLM item text is built from them (title first), as for any dataset."""
    import numpy as np

    from llm_cloud.context_text import ContextConfig
    from llm_cloud.pipeline import encode_items
    from recsys.config import DataConfig
    from recsys.datasets import import_csv

    class Recording:  # a test double of the backbone: records the texts, returns zeros
        name = "recording"

        def encode(self, texts):
            self.texts = list(texts)
            return np.zeros((len(texts), 4), dtype=np.float32)

    csv = tmp_path / "t.csv"
    csv.write_text("user,item,timestamp,brand,title\nu1,a,0,Acme,Alpha\nu1,b,1,,Beta\nu2,a,0,Acme,\nu2,c,1,Zeta,\n")
    data = DataConfig(workdir=str(tmp_path / "atomic"))
    import_csv(csv, "mine", data)
    backbone = Recording()
    out = encode_items("mine", data, ContextConfig(), backbone)
    assert out.item_ids == ["a", "b", "c"]
    assert backbone.texts == ["title: Alpha. brand: Acme.", "title: Beta.", "brand: Zeta."]
