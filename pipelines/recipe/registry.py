"""A name-to-implementation table for each option family a recipe names (optimizers, schedules,
augmentation policies, TTA views, ensemble methods). Each table lives beside the code it names; the
spec layer holds plain names, and `pipelines.checks` holds them against these tables at start-up."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what the names are, for messages: "optimizer", "TTA view", ...

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@OPTIMIZERS.register("sgd")` above the function that implements it."""
        def add(implementation: T) -> T:
            self[name] = implementation
            return implementation
        return add

    def problem(self, name: str) -> str | None:
        """None for a known name, else what is wrong and what exists (for a one-line error)."""
        if name in self:
            return None
        close = difflib.get_close_matches(name, list(self), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {self.kind} '{name}': {hint}known: {', '.join(sorted(self))}"
