"""The chat service (Flask): per-session context, retrieval, and a last PII check on replies."""
