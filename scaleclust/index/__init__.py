"""Sharded faiss IVF index: choose, train, add, fan-out search, kNN graph, near-duplicates."""
