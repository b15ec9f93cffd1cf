"""The ONNX export: on every ml-100k test row the files rank as the torch model does (top-10 identical but for
one-ulp ties, the score gap reported and bounded), for both backbones; side views are folded in; ``persona export
--format onnx``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli import main as cli
from persona_device.model import META_FILE, OnnxModel
from persona_device.runtime import OnnxDeviceRuntime
from recsys.config import ModelConfig
from recsys.item_side import ItemSide
from recsys.models import MODELS, EditableSeqRec
from recsys.onnx_export import SCORE_TOL, OnnxExportOptions, check_export, export_onnx
from recsys.runtime import DeviceRuntime
from tests.device_models import trained


@pytest.fixture(scope="module")
def models(ml100k_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return lambda name: trained(name, ml100k_split, root)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_export_ranks_every_test_row_as_the_torch_model(models, ml100k_split, name):
    torch.set_num_threads(1)
    t = models(name)
    rows = ml100k_split[1].eval_rows("test")
    check = check_export(t.model, t.export_dir, rows["item_id_list"], rows["item_length"])
    print(f"{name}: {check.summary()}")
    assert check.rows == len(rows) > 10_000
    assert check.mismatches == 0 and check.max_score_diff <= SCORE_TOL and check.ok
    assert check.tie_swaps <= check.rows // 1000  # one-ulp ties ordered the other way (19,810 / 19,811 identical)
    assert json.loads(check.to_json())["ok"] is True
    one = OnnxDeviceRuntime(OnnxModel(t.export_dir)), DeviceRuntime(t.model, t.tokens)  # batch 1 as well
    for i in range(5):
        history = rows["item_id_list"][i, : rows["item_length"][i]].tolist()
        assert one[0].rank(history, 10)[0] == one[1].rank(history, 10)[0]


def _fused_model(n_items: int = 40, dim: int = 16) -> EditableSeqRec:
    g = torch.Generator().manual_seed(0)
    side = ItemSide(torch.randn(n_items, 24, generator=g), None, torch.rand(n_items, generator=g) > 0.3)
    torch.manual_seed(0)
    m = ModelConfig(item_side="fused", hidden_size=dim, inner_size=32)
    model = EditableSeqRec("sasrec", m, n_items, max_seq_len=8, side=side).eval()
    torch.nn.init.normal_(model.side.proj.weight, std=0.3)  # a side view that moves the scores
    return model


def test_a_side_view_model_is_exported_folded_and_scores_the_same(tmp_path):
    model = _fused_model()
    out = export_onnx(model, tmp_path, np.array(["[PAD]", *map(str, range(1, 40))]), "toy", OnnxExportOptions(top_k=5))
    g = torch.Generator().manual_seed(1)
    length = torch.randint(1, 9, (64,), generator=g)
    seq = torch.randint(1, 40, (64, 8), generator=g) * (torch.arange(8) < length.view(-1, 1))
    check = check_export(model, out, seq, length, k=5, batch_size=16)
    assert check.ok and check.rows == 64
    onnx = OnnxModel(out)
    assert onnx.meta.top_k == 5 and onnx.meta.n_items == 40 and onnx.items.shape == (40, 16)
    assert np.allclose(onnx.items, model.item_embeddings.detach().numpy())  # the folded table, side view included


def test_the_export_marks_itself_complete_last_and_refuses_a_small_opset(models, tmp_path):
    t = models("sasrec")
    assert json.loads((t.export_dir / META_FILE).read_text())["opset"] == 17
    with pytest.raises(ValueError, match="opset"):
        OnnxExportOptions(opset=13)
    (tmp_path / "encoder.onnx").write_bytes(b"half")
    with pytest.raises(FileNotFoundError, match="no complete ONNX export"):
        OnnxModel(tmp_path)


def test_persona_export_onnx_prints_the_check_on_the_test_split(models, ml100k_split, tmp_path, capsys):
    t = models("sasrec")
    workdir = ml100k_split[0].data.workdir
    argv = ["export", "--format", "onnx", "--top-k", "20", "--out", str(tmp_path), f"output_dir={t.output_dir}",
            f"data.workdir={workdir}", "seeds=[0]", "model_params.item_side=none"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    n = len(ml100k_split[1].eval_rows("test"))
    assert f"ONNX vs torch on the test split: {n:,} rows: top-10 identical on " in out and "0 otherwise" in out
    assert OnnxModel(tmp_path).meta.top_k == 20
