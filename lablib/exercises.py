"""Prediction exercises: the learner writes down what will happen, the lab runs it and grades.

Each lab's ``check_prediction`` names what is predicted and how to measure it; :func:`grade`
does the rest: it refuses to run (and so to give the answer away) while an item is blank or
``???``, then compares each item with the measurement, one line per item.

Not covered: free-text answers (every item is one word or one number, compared after
normalising; a number is right within a stated margin).
"""

from __future__ import annotations

from typing import Callable, Mapping

__all__ = ["grade"]

BLANK = ("", "?", "???")


def grade(prediction: Mapping[str, object], normalise: Mapping[str, Callable[[str], str]],
          measure: Callable[[], Mapping[str, str]], within: Mapping[str, float] | None = None) -> tuple[bool, str]:
    """Grade ``prediction`` against ``measure()``; ``normalise`` maps each item to how its
    answers are compared (``str.upper`` for FIN/RST, ``str.lower`` for outcomes...). An item
    in ``within`` is a number, right when it is that close to the measurement.

    Returns (all right, the feedback: one line per item, or a request to fill in blanks)."""
    within = within or {}
    blanks = [k for k in normalise if str(prediction.get(k, "")).strip() in BLANK]
    if blanks:
        return False, f"Fill in your prediction for {' and '.join(blanks)} first; then this cell runs the experiment."
    unreadable = [k for k in within if not _is_number(normalise[k](str(prediction[k]).strip()))]
    if unreadable:
        return False, f"Write {' and '.join(unreadable)} as a number (of milliseconds, say 250); then this cell runs."
    measured = measure()
    guesses = {k: norm(str(prediction[k]).strip()) for k, norm in normalise.items()}

    def right(k: str) -> bool:
        if k in within:
            return _is_number(measured[k]) and abs(float(guesses[k]) - float(measured[k])) <= within[k]
        return guesses[k] == measured[k]

    lines = [f"{'right' if right(k) else 'not quite'}: {k} = {measured[k]} (you said {guesses[k]}"
             + (f"; right within {within[k]:g})" if k in within else ")") for k in normalise]
    return all(right(k) for k in normalise), "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.lower() not in ("nan", "inf", "-inf")
