"""The out-of-distribution score the cloud's prototype bank and the device share: how likely the base
model is to miss a user's next item.

``score = w_entropy · H + w_proto · logit(m_k) + bias``: ``H`` is the entropy of the base model's
softmax over the catalogue (the device computes it from its own scores), ``m_k`` the smoothed share of
next items that the base model left out of its top 10 among the devices of the user's nearest
prototype ``k`` (nearest signature in user-state space). The cloud fits the weights on validation
rows and sends them with its bank; a dynamic bank keeps counting ``m_k`` as the consumed items of the
test period arrive. A device scoring above ``threshold`` is out of distribution.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from recsys import metrics

MISS_AT = 10  # a miss: the next item is outside the base model's top 10


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` entropy (nats) of the softmax over every real item (the padding column 0 is left out)."""
    logp = torch.log_softmax(logits[..., 1:].float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def missed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the target ranks ``MISS_AT`` or lower (padding column excluded, ties counted against)."""
    s = logits.clone()
    s[..., 0] = float("-inf")
    return metrics.target_rank(s, targets) >= MISS_AT


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def combine(ent: torch.Tensor, odds: torch.Tensor, w_entropy: float, w_proto: float, bias: float) -> torch.Tensor:
    """The score from each row's base entropy and its prototype's miss log-odds (the one formula)."""
    return w_entropy * ent + w_proto * odds + bias


class OodScore(BaseModel):
    """What a device needs to compute the score: the weights, each prototype's miss log-odds, the threshold."""

    model_config = ConfigDict(extra="forbid")
    w_entropy: float
    w_proto: float
    bias: float
    proto_logodds: list[float]  # logit(m_k) per prototype
    threshold: float

    def score(self, ent: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[B]`` scores from the base entropies ``ent`` and nearest prototypes ``k``."""
        odds = torch.tensor(self.proto_logodds, dtype=torch.float32)[k.long().cpu()].to(ent.device)
        return combine(ent, odds, self.w_entropy, self.w_proto, self.bias)


def fit_weights(ent: torch.Tensor, odds: torch.Tensor, miss: torch.Tensor, steps: int = 200) -> tuple[float, ...]:
    """Logistic regression of ``miss`` on ``[entropy, prototype log-odds]`` (L-BFGS, small L2)."""
    x = torch.stack([ent.double(), odds.double()], 1)
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z, y = (x - mu) / sd, miss.double()
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w[:2] + w[2], y) + 1e-4 * (w[:2] ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a = (w[:2] / sd).detach()
    return float(a[0]), float(a[1]), float(w[2].detach() - (a * mu).sum())
