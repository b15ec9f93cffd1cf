"""Multi-modal item and user context.

Item text comes from the dataset's text fields through its template (``data.text_template``, set per
dataset in ``recsys/configs/datasets/``); ``[...]`` marks an optional segment, dropped when a field
inside it is empty (``"{title}.[ Tags: {tags}.]"``).
For datasets that ship image features (amazon-scientific) the text embedding is fused with them:
each block is L2-normalised, scaled by ``sqrt(1-w)`` and ``sqrt(w)`` and concatenated. The fused
vector has unit norm and its cosine is exactly ``(1-w)·cos_text + w·cos_image``: parameter-free,
needs no training labels, neither modality dominates by width or scale, and ``w`` says how much the
picture counts. A user's context is the texts of their most recent items, most recent first (so
truncation by the tokenizer drops the oldest).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


class ContextError(ValueError):
    """A template names a field the item table lacks, or the inputs do not line up."""


class ContextConfig(BaseModel):
    """How item and user context texts are built (``context:`` section)."""

    model_config = ConfigDict(extra="forbid")

    empty_text: str = "item {item_id}"  # used when an item's template renders to nothing
    image_weight: float = Field(0.3, ge=0.0, le=1.0)  # share of the fused cosine from image features; 0 = off
    user_template: str = "Recently: {items}"
    user_max_items: int = Field(10, ge=1)
    user_separator: str = " | "


def template_for(template: str | None, columns: Sequence[str]) -> str:
    """``template``, or ``"[column: {column}.]"`` for each text column when the dataset sets none."""
    return template or " ".join(f"[{c}: {{{c}}}.]" for c in columns if c != "item_id")


def render(template: str, fields: Mapping[str, str]) -> str:
    """Fill ``template``; an optional ``[...]`` segment vanishes when any field in it is empty."""

    def optional(match: re.Match) -> str:
        names = [n for _, n, _, _ in string.Formatter().parse(match.group(1)) if n]
        return match.group(1).format_map(fields) if all(str(fields[n]).strip() for n in names) else ""

    try:
        text = _OPTIONAL.sub(optional, template).format_map(fields)
    except KeyError as exc:
        raise ContextError(f"template field {exc} is not an item column (have: {', '.join(fields)})") from exc
    return " ".join(text.split())


def item_texts(items: pd.DataFrame, template: str | None, cfg: ContextConfig) -> list[str]:
    """One context text per row of the item table (``item_id`` + text columns); ``template``: ``data.text_template``."""
    template = template_for(template, list(items.columns))
    out = []
    for row in items.to_dict("records"):
        text = render(template, row)
        out.append(text if text.strip(" .:|") else cfg.empty_text.format_map(row))
    return out


def fuse_image(text_emb: np.ndarray, image: np.ndarray, weight: float) -> np.ndarray:
    """``[sqrt(1-w)·t/|t|, sqrt(w)·i/|i|]`` row-wise (see module docstring)."""
    if len(text_emb) != len(image):
        raise ContextError(f"{len(text_emb)} text embeddings but {len(image)} image feature rows")
    t = text_emb / np.maximum(np.linalg.norm(text_emb, axis=1, keepdims=True), 1e-12)
    i = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    return np.hstack([np.sqrt(1.0 - weight) * t, np.sqrt(weight) * i]).astype(np.float32)


def user_context(recent_item_texts: Sequence[str], cfg: ContextConfig) -> str:
    """Context text of a user from their recent items' texts (oldest first in, most recent first out)."""
    recent = [t for t in recent_item_texts if t.strip()][-cfg.user_max_items :][::-1]
    if not recent:
        raise ContextError("user has no recent items with text")
    return cfg.user_template.format(items=cfg.user_separator.join(recent))
