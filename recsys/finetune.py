"""On-device fine-tuning of the head on the user's own window: the costly alternative Persona replaces.

For each device, a copy of the head is trained for a few Adam steps on next-item prediction inside
its recent window (encoder frozen), then ranks. Devices are independent, so a batch of devices is
trained at once with per-sample weight tensors: the summed loss gives each copy exactly its own
gradient, and Adam is element-wise, so this equals fine-tuning every device separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.loop import optimizer_step
from recsys.models import ACTIVATIONS, EditableSeqRec, HeadEdit

NO_CLIP = 1e6


def _per_sample_head(model: EditableSeqRec, h: torch.Tensor, ws: list[torch.Tensor], bs: list[torch.Tensor]):
    """``h`` ``[B, P, D]`` through per-sample head weights ``ws[l]`` ``[B, D, D]``, ``bs[l]`` ``[B, D]``."""
    act = ACTIVATIONS[model.head.activation]
    x = h
    for i, (w, b) in enumerate(zip(ws, bs)):
        y = torch.bmm(x, w.transpose(1, 2)) + b.unsqueeze(1)
        x = act(y) if i < len(ws) - 1 else y
    return h + x


def finetune_edit(
    model: EditableSeqRec, item_seq: torch.Tensor, item_len: torch.Tensor, window: int, steps: int = 5, lr: float = 1e-2
) -> HeadEdit:
    """Fine-tune a per-device head copy on the last ``window`` transitions; return it as an edit of the base."""
    with torch.inference_mode(False), torch.enable_grad():
        return _finetune(model, item_seq.clone(), item_len.clone(), window, steps, lr)


def _finetune(model, item_seq, item_len, window, steps, lr) -> HeadEdit:
    model.eval()
    with torch.no_grad():
        states = model.position_states(item_seq)  # [B, T, D], encoder frozen
    b, t, _ = states.shape
    # pairs (state after position p, item at p + 1) for the last `window` transitions before item_len
    offs = torch.arange(window, device=item_seq.device)
    src = item_len.view(-1, 1) - 1 - window + offs.view(1, -1)  # p in [len-1-window, len-2]
    valid = src >= 0
    src_c = src.clamp(min=0)
    h = states.gather(1, src_c.unsqueeze(-1).expand(-1, -1, states.size(-1)))
    targets = item_seq.gather(1, (src_c + 1).clamp(max=t - 1)) * valid
    anchors = model.head.anchors()
    ws = [w.detach().unsqueeze(0).repeat(b, 1, 1).requires_grad_() for w, _ in anchors]
    bs = [bb.detach().unsqueeze(0).repeat(b, 1).requires_grad_() for _, bb in anchors]
    opt = torch.optim.Adam([*ws, *bs], lr=lr)
    emb = model.item_embeddings.detach()
    counts = valid.sum(1).clamp(min=1)
    for _ in range(steps):  # a few full-batch steps per device: the loop's per-step update, not its epochs
        q = _per_sample_head(model, h, ws, bs)
        logits = q @ emb.T
        logits[..., 0] = float("-inf")
        flat = logits.reshape(-1, logits.size(-1))
        nll = F.cross_entropy(flat, targets.reshape(-1), ignore_index=0, reduction="none")
        optimizer_step(opt, (nll.view(b, -1).sum(1) / counts).sum())  # per-device mean, summed: independent
    return HeadEdit(
        [(w - a.detach()).detach() for w, (a, _) in zip(ws, anchors)],
        [(bb - a.detach()).detach() for bb, (_, a) in zip(bs, anchors)],
        clip=NO_CLIP,
    )
