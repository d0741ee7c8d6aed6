"""Prediction exercises: the learner writes down what will happen, the lab runs it and grades.

Each lab's ``check_prediction`` names what is predicted and how to measure it; :func:`grade`
does the rest: it refuses to run (and so to give the answer away) while an item is blank or
``???``, then compares each item with the measurement, one line per item.

Not covered: free-text answers (every item is one word, compared after normalising).
"""

from __future__ import annotations

from typing import Callable, Mapping

__all__ = ["grade"]

BLANK = ("", "?", "???")


def grade(prediction: Mapping[str, object], normalise: Mapping[str, Callable[[str], str]],
          measure: Callable[[], Mapping[str, str]]) -> tuple[bool, str]:
    """Grade ``prediction`` against ``measure()``; ``normalise`` maps each item to how its
    answers are compared (``str.upper`` for FIN/RST, ``str.lower`` for outcomes...).

    Returns (all right, the feedback: one line per item, or a request to fill in blanks)."""
    blanks = [k for k in normalise if str(prediction.get(k, "")).strip() in BLANK]
    if blanks:
        return False, f"Fill in your prediction for {' and '.join(blanks)} first; then this cell runs the experiment."
    measured = measure()
    guesses = {k: norm(str(prediction[k]).strip()) for k, norm in normalise.items()}
    lines = [f"{'right' if guesses[k] == measured[k] else 'not quite'}: {k} = {measured[k]} (you said {guesses[k]})"
             for k in normalise]
    return all(guesses[k] == measured[k] for k in normalise), "\n".join(lines)
