"""Semantic codebook: residual quantization of item embeddings held in FAISS."""
