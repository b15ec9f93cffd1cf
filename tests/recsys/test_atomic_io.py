"""Atomic writes: a reader sees the old file or the new one, never a part; no temp file is left behind."""

from __future__ import annotations

import torch

from recsys.atomic_io import atomic_torch_save, atomic_write_bytes, atomic_write_text


def test_atomic_writes_replace_whole_files_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    atomic_write_bytes(tmp_path / "blob", b"\x00\x01")
    assert (tmp_path / "blob").read_bytes() == b"\x00\x01"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "model.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["blob", "model.pt", "state.json"]
