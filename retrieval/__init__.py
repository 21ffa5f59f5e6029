"""Dual-encoder fine-tuning, the FAISS response index, and the offline evaluation."""
