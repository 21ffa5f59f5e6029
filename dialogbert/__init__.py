"""dialogbert: a BERT that reads conversations, and the response-selection bot built on it."""
__version__ = "0.1.0"
