"""The distilled edit as the cloud's editor: batched, each row the offline ``distilled_edit`` of its history, a
compact wire payload the device decodes exactly, and a teacher that cannot teach the device refused by name."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from llm_cloud.distill import DistillConfig, distilled_edit
from llm_cloud.distill_editor import DistilledEditor
from llm_cloud.editor import EditAsk, edit_one
from llm_cloud.teacher import EnsembleTeacher
from recsys.checkpoint import CheckpointError
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload
from tests.llm_cloud.test_teacher import N_ITEMS, TOKENS, D, T, checkpoint, histories, tiny_model

CFG = DistillConfig(steps=40, lr=0.1, clip=4.0)  # untrained toy models sit far apart (see test_distill)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(device dir, teacher dirs): a SASRec device and a two-member teacher over the device's item table."""
    tmp = tmp_path_factory.mktemp("distill-editor")
    device = tiny_model("sasrec", 0)
    members = [tiny_model("gru4rec", 1), tiny_model("sasrec", 2)]
    for m in members:
        with torch.no_grad():
            m.encoder.item_embedding.weight.copy_(device.encoder.item_embedding.weight)
    return checkpoint(tmp, device, "device"), [checkpoint(tmp, m, f"teacher{i}") for i, m in enumerate(members)]


def rows_of(seq: torch.Tensor, length: torch.Tensor) -> list[list[int]]:
    return [seq[b, : length[b]].tolist() for b in range(len(seq))]


def test_each_served_row_is_the_offline_distilled_edit_of_its_history(dirs):
    device_dir, teacher_dirs = dirs
    editor = DistilledEditor.load(device_dir, teacher_dirs, CFG)
    runtime = DeviceRuntime.load(device_dir)
    seq, length = histories(n=12, seed=4)
    teacher = EnsembleTeacher.load(teacher_dirs)
    offline = distilled_edit(runtime.model, seq, length, teacher.log_probs(seq, length), CFG).db[-1]
    rows = rows_of(seq, length)
    served = [*editor.edit_many([EditAsk(h, "fp32") for h in rows[:5]]),  # other batch compositions
              *editor.edit_many([EditAsk(h, "fp32") for h in rows[5:]])]  # fmt: skip
    for b, payload in enumerate(served):
        got = runtime.decode_edit(EditPayload.model_validate_json(payload.model_dump_json(exclude_none=True)))
        assert got.dW == [None, None] and got.db[0] is None
        assert torch.allclose(got.db[-1], offline[b], atol=1e-5), float((got.db[-1] - offline[b]).abs().max())
        want = type(got)([None, None], [None, offline[b]], clip=CFG.clip)
        assert runtime.rank(rows[b], 10, edit=got)[0] == runtime.rank(rows[b], 10, edit=want)[0]
    assert any(runtime.rank(h, 10, edit=runtime.decode_edit(p))[0] != runtime.rank(h, 10)[0]
               for h, p in zip(rows, served))  # fmt: skip  (the edit moves rankings: the check above can fail)


def test_every_encoding_carries_the_last_layers_bias_only(dirs):
    editor = DistilledEditor.load(*dirs, CFG)
    history = [3, 9, 27]
    exact = edit_one(editor, history, "fp32").head_edit().db[-1]
    for encoding, sent, size in (("code", "fp32", 4 * D), ("fp32", "fp32", 4 * D), ("fp16", "fp16", 2 * D)):
        payload = edit_one(editor, history, encoding)
        assert (payload.encoding, payload.parts, payload.prototype_id) == (sent, ["db.1"], None)
        assert len(base64.b64decode(payload.data)) == size
        want = exact if sent == "fp32" else exact.half().float()
        assert torch.equal(payload.head_edit().db[-1], want)
    assert torch.equal(edit_one(editor, history, "json").head_edit().db[-1], exact)


def test_empty_and_unknown_histories_read_as_the_device_reads_them(dirs):
    editor = DistilledEditor.load(*dirs, CFG)
    runtime = DeviceRuntime.load(dirs[0])
    seq, length = runtime.encode_histories([[], [5] * (T + 4)])  # padding with length 1; the last T items
    teacher = EnsembleTeacher.load(dirs[1])
    offline = distilled_edit(runtime.model, seq, length, teacher.log_probs(seq, length), CFG).db[-1]
    served = editor.edit_many([EditAsk([]), EditAsk([0, N_ITEMS + 3] + [5] * (T + 4))])
    for b, payload in enumerate(served):
        assert torch.allclose(payload.head_edit().db[-1], offline[b], atol=1e-5)


def test_the_bank_is_empty_and_the_version_names_weights_and_solver(dirs):
    a = DistilledEditor.load(*dirs, CFG)
    assert a.snapshot().size == 0 and a.snapshot().version == a.version and a.version.startswith("distilled-")
    assert DistilledEditor.load(*dirs, CFG).version == a.version
    assert DistilledEditor.load(*dirs, DistillConfig(steps=41, lr=0.1, clip=4.0)).version != a.version
    assert DistilledEditor.load(dirs[0], dirs[1][:1], CFG).version != a.version


def test_a_teacher_that_cannot_teach_the_device_is_refused_by_name(dirs, tmp_path):
    device_dir, teacher_dirs = dirs
    renamed = checkpoint(tmp_path, tiny_model("sasrec", 3), "renamed", np.array([*TOKENS[:-1], "other"]))
    with pytest.raises(CheckpointError, match=f"serve.cloud.teacher.*{device_dir}"):
        DistilledEditor.load(device_dir, [renamed], CFG)
    with pytest.raises(CheckpointError, match=str(renamed)):  # members of two vocabularies
        DistilledEditor.load(device_dir, [*teacher_dirs, renamed], CFG)
    short = tiny_model("gru4rec", 4)
    short.max_seq_len = T - 2  # reads fewer items than the device sends (GRU4Rec: no position table to resize)
    with pytest.raises(CheckpointError, match="read fewer items"):
        DistilledEditor.load(device_dir, [checkpoint(tmp_path, short, "short")], CFG)
    with pytest.raises(CheckpointError, match="needs a teacher"):
        DistilledEditor.load(device_dir, [], CFG)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        DistilledEditor.load(device_dir, [tmp_path / "missing"], CFG)
