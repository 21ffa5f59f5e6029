"""dialogbert: a BERT that reads conversations, and the response-selection bot built on it.

Importing the package registers the ``dialogbert`` model type with transformers' Auto classes
(when transformers is installed), so ``AutoModel.from_pretrained(folder)`` loads a DialogBERT
folder after a plain ``import dialogbert``."""
__version__ = "0.1.0"


class MissingPackage(RuntimeError):
    """A package that a saved model or index needs is not installed (the ranker's USE towers, the
    n-gram encoder's morpheme analyser, the e5 weights); the message names the fix. The command
    line reports it like a bad input, without a traceback."""


def _register() -> None:
    import importlib.util
    if importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None:
        from dialogbert import modeling  # noqa: F401  (AutoConfig/AutoModel.register)


_register()
