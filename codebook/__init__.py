"""Semantic codebook: residual quantization of item embeddings held in FAISS.

``SemanticCodebook.build(emb, cfg)`` → semantic IDs per item, codebook hits for any embedding,
semantic-ID prefix → items, and ``save``/``load`` of the FAISS index + JSON;
``codebook.metrics.quality(book, emb)``: its quality report.
"""

from codebook.config import CodebookConfig
from codebook.semantic import CodebookError, SemanticCodebook

__all__ = ["CodebookConfig", "CodebookError", "SemanticCodebook"]
