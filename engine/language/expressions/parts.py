"""Which piece of an expression's text each node of its compiled JsonLogic stands for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Part:
    """The piece of the expression text one JsonLogic node stands for.

    `kind` says how explanations show its value: "read" (a field read) and
    "call" (len(...), any(...)) have it written after them, "test" (a condition
    that is an operand of and / or / not) is shown with its verdict, "value"
    (arithmetic, a whole comparison) shows nothing of its own, and "inner"
    (inside any/all/sum, one value per item) is never shown.
    """

    start: int
    end: int
    kind: str
