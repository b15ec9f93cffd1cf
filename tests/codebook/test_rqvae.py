"""RQ-VAE on real ml-100k MiniLM embeddings: it learns, and FAISS serves exactly its codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codebook import CodebookConfig, SemanticCodebook, quantizer, rqvae
from codebook.metrics import level_stats
from tests.llm_cloud.helpers import ml100k_embeddings


@pytest.fixture(scope="module")
def x(workdir, emb_cache):
    emb = ml100k_embeddings(workdir, emb_cache).embeddings
    return SemanticCodebook.build(emb, CodebookConfig(bits=4, levels=1, max_levels=1)).transform(emb)


def recon(model, x):
    z = rqvae.latent(model, x)
    with torch.no_grad():
        _, codes, _ = model(torch.from_numpy(x))
    return float(((rqvae.decode_codes(model, codes.numpy()) - x) ** 2).sum(1).mean()), z


def test_rqvae_learns_and_is_served_from_faiss(x):
    cfg = rqvae.RQVAEConfig(levels=2, bits=6, epochs=12, latent=32, restart_every=3)
    untrained = rqvae.RQVAE(x.shape[1], cfg).eval()
    with torch.no_grad():
        untrained.codebooks.normal_(0, 0.1)
    model = rqvae.train_rqvae(x, cfg)
    err, z = recon(model, x)
    assert err < recon(untrained, x)[0] and err < 1.0  # unit vectors: predicting 0 gives 1.0
    index = rqvae.faiss_index(model, x)
    _, torch_codes, _ = model(torch.from_numpy(x))
    np.testing.assert_array_equal(quantizer.encode(index, z), torch_codes.numpy())
    assert min(s["utilisation"] for s in level_stats(torch_codes.numpy(), [64, 64])) >= 0.8


def test_dead_code_restarts_prevent_collapse(x):
    def utilisation(restart_every):
        cfg = rqvae.RQVAEConfig(levels=2, bits=6, epochs=12, latent=32, restart_every=restart_every)
        model = rqvae.train_rqvae(x, cfg)
        with torch.no_grad():
            _, codes, _ = model(torch.from_numpy(x))
        return [s["utilisation"] for s in level_stats(codes.numpy(), [64, 64])]

    without = utilisation(restart_every=100)
    assert max(without) < 0.5  # measured: 9% / 16% of codewords alive
    assert min(utilisation(restart_every=3)) >= 0.8
