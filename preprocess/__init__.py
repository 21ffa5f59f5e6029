"""Messenger exports in, anonymized conversation shards out (see docs/preprocess.md)."""
