"""Fused, chunked, token-weighted linear cross-entropy (see linear_cross_entropy.py)."""
from loss.linear_cross_entropy import DEFAULT_CHUNK_SIZE, weighted_linear_cross_entropy

__all__ = ["weighted_linear_cross_entropy", "DEFAULT_CHUNK_SIZE"]
