"""recipes.data on a small synthetic CSV (synthetic data, never called real): per-user positions are
detected as the order protocol, and the summary says so with the counts and split sizes."""

from __future__ import annotations

from recipes.data import import_user_csv, summary
from serving.config import load_app_config


def test_imported_positions_are_order_and_the_summary_says_what_later_commands_see(tmp_path):
    rows = ["user,item,timestamp,title"]
    for u in range(12):
        rows += [f"u{u},i{(u + p) % 15},{p},Item {(u + p) % 15}" for p in range(6)]
    csv = tmp_path / "mine.csv"
    csv.write_text("\n".join(rows) + "\n")
    overrides = [f"data.workdir={tmp_path / 'atomic'}"]
    cfg = load_app_config(overrides=overrides)
    out = import_user_csv(csv, "mine", cfg)
    cfg = load_app_config(overrides=[*overrides, "dataset=mine"])
    assert cfg.data.protocol == "order"  # recorded with the files, picked up with no flag
    lines = summary(cfg, "mine", out, {})
    assert lines[0].startswith("mine: 12 users, 15 items, 72 interactions")
    assert lines[1].startswith("protocol: order (per-user leave-last-out; detected:")
    assert lines[2].startswith("split: train") and "test 12 rows / 12 users" in lines[2]
