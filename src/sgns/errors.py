"""User-facing errors: one clear line, no traceback."""


class Word2VecError(Exception):
    """A problem with the user's input or configuration, reported as one line."""


class UnknownWordError(Word2VecError, KeyError):
    """A query word that is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def check(condition: bool, message: str) -> None:
    """Raise Word2VecError(message) unless condition holds."""
    if not condition:
        raise Word2VecError(message)
