"""User-facing errors: one clear line, no traceback; and the checks of config values that raise them."""

from __future__ import annotations

import math
from typing import Any, Iterable


class Word2VecError(Exception):
    """A problem with the user's input or configuration, reported as one line."""


class Diverged(Word2VecError):
    """Training diverged (a loss or a weight not finite, or far above the untrained loss). In a sweep
    this is an outcome of the trial's settings, not bad input: the trial fails and the sweep goes on."""


class UnknownWordError(Word2VecError, KeyError):
    """A query word that is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def check(condition: bool, message: str) -> None:
    """Raise Word2VecError(message) unless condition holds."""
    if not condition:
        raise Word2VecError(message)


def check_int(name: str, value: Any, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    """``name`` must be an integer in [low, high] (or null when ``optional``)."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    check(ok, f"{name} must be {'null or ' if optional else ''}an integer {bounds}, got {value!r}")


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``name`` must be a finite real number within the bounds given (open or closed)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    bounds = " and ".join(
        ([f"{'>' if low_open else '>='} {low}"] if low is not None else [])
        + ([f"{'<' if high_open else '<='} {high}"] if high is not None else [])
    )
    check(ok, f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    check(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def word_list(name: str, value: Any) -> list[str]:
    """A list of words from a config value: null is none, one word is one word (``probe_words=king``
    on the command line), a list is its items (numbers as the tokens they were written as: Hydra
    reads ``[1984,king]`` as a number and a string)."""
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        value = [value]
    check(
        isinstance(value, Iterable) and all(isinstance(w, (str, int, float)) for w in value),
        f"{name} must be a word or a list of words, got {value!r}",
    )
    return [str(w) for w in value]
