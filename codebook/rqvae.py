"""RQ-VAE (TIGER-style) trained in torch, its residual codebooks then served from FAISS.

Encoder MLP → latent z → ``levels`` residual VQ stages (k-means initialised, dead codes restarted
from live residuals) → decoder MLP; loss = reconstruction MSE + codebook + β·commitment, straight-
through gradients. After training the codebooks are copied into a FAISS ``IndexResidualQuantizer``
over the latent space, so lookups run in FAISS exactly as for the plain residual quantizer.
Used by ``benchmarks/rqvae_vs_rq.py`` to compare against FAISS's own ``ResidualQuantizer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch import nn

from codebook.quantizer import SEARCH_TYPE


@dataclass
class RQVAEConfig:
    latent: int = 64
    hidden: int = 256
    levels: int = 3
    bits: int = 8
    epochs: int = 150
    batch_size: int = 512
    lr: float = 1e-3
    beta: float = 0.25
    restart_every: int = 10  # epochs between dead-code restarts
    seed: int = 0
    threads: int | None = 1  # torch threads while training (1 was 20x faster than 2 on the busy 2-core box)


class RQVAE(nn.Module):
    def __init__(self, d_in: int, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        k = 1 << cfg.bits
        self.encoder = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.latent))
        self.decoder = nn.Sequential(nn.Linear(cfg.latent, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, d_in))
        self.codebooks = nn.Parameter(torch.zeros(cfg.levels, k, cfg.latent))

    def quantize(self, z: torch.Tensor):
        """Greedy residual VQ → (codes [n, L], quantized z, VQ loss)."""
        residual, zq, codes, loss = z, torch.zeros_like(z), [], z.new_zeros(())
        for level in range(self.cfg.levels):
            book = self.codebooks[level]
            idx = torch.cdist(residual, book).argmin(1)
            c = book[idx]
            loss = loss + ((residual.detach() - c) ** 2).mean() + self.cfg.beta * ((residual - c.detach()) ** 2).mean()
            codes.append(idx)
            zq = zq + c
            residual = residual - c.detach()
        return torch.stack(codes, 1), zq, loss

    def forward(self, x):
        z = self.encoder(x)
        codes, zq, vq_loss = self.quantize(z)
        x_hat = self.decoder(z + (zq - z).detach())
        return x_hat, codes, vq_loss


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, min_points_per_centroid=1, max_points_per_centroid=10**6)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def train_rqvae(x: np.ndarray, cfg: RQVAEConfig) -> RQVAE:
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(x, cfg)
    finally:
        torch.set_num_threads(before)


def _train(x: np.ndarray, cfg: RQVAEConfig) -> RQVAE:
    torch.manual_seed(cfg.seed)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model = RQVAE(x.shape[1], cfg)
    k = 1 << cfg.bits
    with torch.no_grad():  # k-means init of each level on the untrained encoder's residuals
        residual = model.encoder(data)
        for level in range(cfg.levels):
            model.codebooks[level] = torch.from_numpy(_kmeans(residual.numpy(), k, cfg.seed + level))
            residual = residual - model.codebooks[level][torch.cdist(residual, model.codebooks[level]).argmin(1)]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        for batch in torch.randperm(len(data), generator=gen).split(cfg.batch_size):
            xb = data[batch]
            x_hat, _, vq = model(xb)
            loss = ((x_hat - xb) ** 2).sum(1).mean() + vq
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (epoch + 1) % cfg.restart_every == 0 and epoch + 1 < cfg.epochs:
            _restart_dead_codes(model, data, gen)
    return model.eval()


@torch.no_grad()
def _restart_dead_codes(model: RQVAE, data: torch.Tensor, gen: torch.Generator) -> None:
    """Move codewords no item uses onto random live residuals of that level."""
    residual = model.encoder(data)
    for level in range(model.cfg.levels):
        book = model.codebooks[level]
        idx = torch.cdist(residual, book).argmin(1)
        dead = torch.ones(len(book), dtype=torch.bool)
        dead[idx] = False
        if dead.any():
            pick = torch.randint(len(residual), (int(dead.sum()),), generator=gen)
            book[dead] = residual[pick] + 1e-3 * torch.randn(len(pick), residual.shape[1], generator=gen)
            idx = torch.cdist(residual, book).argmin(1)
        residual = residual - book[idx]


@torch.no_grad()
def latent(model: RQVAE, x: np.ndarray) -> np.ndarray:
    return model.encoder(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


@torch.no_grad()
def decode_codes(model: RQVAE, codes: np.ndarray) -> np.ndarray:
    c = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    zq = sum(model.codebooks[level][c[:, level]] for level in range(model.cfg.levels))
    return model.decoder(zq).numpy()


def faiss_index(model: RQVAE, items: np.ndarray):
    """An ``IndexResidualQuantizer`` over the latent space holding the RQ-VAE's codebooks and the items' codes."""
    cfg = model.cfg
    index = faiss.IndexResidualQuantizer(cfg.latent, cfg.levels, cfg.bits, faiss.METRIC_L2, SEARCH_TYPE)
    rq = index.rq
    rq.max_beam_size = 1  # greedy, as in training
    faiss.copy_array_to_vector(model.codebooks.detach().numpy().astype(np.float32).ravel(), rq.codebooks)
    rq.is_trained = True
    index.is_trained = True
    index.add(np.ascontiguousarray(latent(model, items)))
    return index
