"""Errors that reach the user as one line: what is wrong, where, and how to fix it."""


class UserError(Exception):
    """A problem with the user's input or setup; the CLI prints it as `error: <message>` and exits 2."""


class SpecError(UserError):
    """A competition YAML that does not validate."""


class DataError(UserError):
    """Competition files that are missing, malformed or inconsistent."""


class KaggleError(UserError):
    """The Kaggle API (real or local host) refused or could not be reached."""
