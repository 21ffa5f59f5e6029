"""dialogbert: a BERT that reads conversations, and the response-selection bot built on it."""
__version__ = "0.1.0"


class MissingPackage(RuntimeError):
    """A package that a saved model or index needs is not installed (the ranker's USE towers, the
    n-gram encoder's morpheme analyser); the message names the fix. The command line reports it
    like a bad input, without a traceback."""
