"""llm_cloud.backbones.base: the Backbone interface (batched by length, rows in input order), its input and output
checks, model fingerprints, token input; on real MiniLM and a small Backbone of fixed rows."""

from __future__ import annotations

import numpy as np
import pytest

from llm_cloud.backbones.base import Backbone, BackboneError, check_embeddings, model_fingerprint
from tests.llm_cloud.helpers import minilm


def test_batching_and_order_do_not_change_vectors():
    texts = [f"movie number {i} " + "word " * (i % 7) for i in range(11)]
    m = minilm()
    full = m.encode(texts)
    old = m.batch_size
    try:
        m.batch_size = 3
        small = m.encode(texts)
    finally:
        m.batch_size = old
    np.testing.assert_allclose(full, small, atol=1e-5)
    np.testing.assert_allclose(full[4], m.encode([texts[4]])[0], atol=1e-5)


@pytest.mark.parametrize("texts,msg", [(["fine", "  "], "text 1 is empty"), ([], "no texts"),
                                       ("one string", "list of strings"), (["ok", None], "text 1 is NoneType")])
def test_bad_input_is_rejected(texts, msg):
    with pytest.raises(BackboneError, match=msg):
        minilm().encode(texts)


class Fixed(Backbone):
    """A backbone whose batches are given rows (or a wrong shape / NaN on purpose): the base class's checks."""

    name = "fixed"

    def __init__(self, rows: np.ndarray, batch_size: int = 2, dim: int | None = None):
        super().__init__(batch_size=batch_size, progress=False)
        self.rows, self._dim, self.seen = rows, dim, []

    @property
    def key(self) -> str:
        return "fixed"

    @property
    def dim(self):
        return self._dim

    def _encode_batch(self, texts):
        self.seen.append(list(texts))
        return self.rows[[int(t.split()[0]) for t in texts]]


def test_rows_come_back_in_input_order_from_length_sorted_batches():
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    texts = ["3 a longer text", "0", "5 mid", "1 the longest text of all", "4 x", "2 yy"]
    backbone = Fixed(rows)
    np.testing.assert_array_equal(backbone.encode(texts), rows[[3, 0, 5, 1, 4, 2]])
    lengths = [len(t) for batch in backbone.seen for t in batch]
    assert lengths == sorted(lengths) and [len(b) for b in backbone.seen] == [2, 2, 2]


@pytest.mark.parametrize(("rows", "dim", "msg"), [
    (np.ones((6, 3)), 2, "fixed: wrong embedding dimension 3, expected 2"),
    (np.full((6, 2), np.nan), None, "fixed: embeddings contain NaN or inf"),
])
def test_a_batch_of_the_wrong_width_or_not_finite_is_an_error(rows, dim, msg):
    with pytest.raises(BackboneError, match=msg):
        Fixed(rows, dim=dim).encode(["0", "1", "2"])


def test_check_embeddings_wants_one_row_per_text_as_contiguous_float32():
    out = check_embeddings(np.ones((3, 4), dtype=np.float64)[:, ::2], 3, 2, "src")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(BackboneError, match=r"src: expected 2 embeddings, got array of shape \(3, 4\)"):
        check_embeddings(np.ones((3, 4)), 2, None, "src")


def test_model_fingerprint_changes_with_the_weights_not_the_location(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"\x01" * 5000)
    assert model_fingerprint(tmp_path / "a") == model_fingerprint(tmp_path / "b")
    (tmp_path / "b" / "weights.bin").write_bytes(b"\x01" * 4999 + b"\x02")
    assert model_fingerprint(tmp_path / "a") != model_fingerprint(tmp_path / "b")
    assert len(model_fingerprint(tmp_path / "a" / "weights.bin")) == 16


def test_token_input_needs_a_tokenizer():
    with pytest.raises(BackboneError, match="backbone fixed has no tokenizer: send text"):
        Fixed(np.ones((1, 2))).decode_tokens([[1, 2]])
