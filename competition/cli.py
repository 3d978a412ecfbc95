"""Command lines read strictly and reported in one line, like every other bad input.

argparse answers a bad value with its usage block and a line at the end; our commands are mostly run
through make, where the user typed `WORKERS=abc`, not `--workers abc`. `OneLineParser` reports one line,
`error: ...`, exit status 2; `whole_number(...)` names the make variable and what it takes.
"""
from __future__ import annotations

import argparse
import re


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose every refusal is one line (its subcommands' too)."""

    def error(self, message: str):
        # A value checked by `whole_number` names its make variable; drop argparse's "argument --x: " then.
        named = re.match(r"argument [^:]+: ((?:[A-Z_]+|--[a-z-]+)=.*)", message)
        line = named.group(1) if named else f"{message} (`{self.prog} --help` lists what it takes)"
        self.exit(2, f"error: {line}\n")


def whole_number(variable: str, minimum: int | None = 1, maximum: int | None = None, example: int = 2):
    """An argparse `type` for a count or an index that make passes as `VARIABLE=n` (a range the spec
    decides, such as a fold's, is checked later, against the spec: `minimum=None`)."""
    if minimum is not None and maximum is not None:
        bounds = f" from {minimum} to {maximum}"
    else:
        bounds = f", at least {minimum}" if minimum is not None else ""
    takes = f"a whole number{bounds} (e.g. {variable}={example})"

    def parse(text: str) -> int:
        value = int(text) if re.fullmatch(r"\s*[+-]?\d{1,9}\s*", text) else None
        if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{variable}={text}: must be {takes}")
        return value

    parse.__name__ = variable.lower()  # argparse names the type in messages it writes itself
    return parse
