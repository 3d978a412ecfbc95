"""The one redaction of credentials in text that is printed or logged.

A connection string carries its credentials between the scheme and an `@`: `postgresql://user:pw@host/db`.
Users mistype URLs (`postgresql:/user:pw@host`, `postgresql//user:pw@host`, `user:pw@host`), and a
redaction that first parses the URL shows those whole. So this one does not parse: in every word of the
text that holds an `@` and looks like a connection string (a scheme before it, or a `:` in what precedes
the last `@`), whatever sits between the scheme (or the word's start, after a `NAME=`) and that last `@`
becomes `***`. A plain e-mail address (`alice@example.com`) is left as it is, and so is the placeholder
of an example in a message (`postgresql://user:password@host/db`).
"""
from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
_WORD = re.compile(r"\S+")
# A scheme and its separator, however mistyped: `postgresql+psycopg://`, `postgresql:/`, `postgresql//`.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*(?::/*|/+)")
_OPENING = "'\"`([{<"
_ASSIGNMENT = re.compile(r"-*[A-Za-z_][\w.-]*=")  # `STORAGE=`, `--storage=` before the URL
_PLACEHOLDER = re.compile(r"(?i)user(name)?(:(password|pw))?")


def _credentials_span(word: str) -> tuple[int, int] | None:
    """(start, end) of the credentials in one whitespace-free word, or None when it holds none."""
    at = word.rfind("@")
    if at <= 0:
        return None
    start = len(word) - len(word.lstrip(_OPENING))
    if assignment := _ASSIGNMENT.match(word, start):
        start = assignment.end()
    scheme = _SCHEME.match(word, start)
    if scheme and scheme.end() <= at:
        start = scheme.end()
    elif ":" not in word[start:at]:
        return None  # `name@host`: an e-mail address, not a credential
    if start >= at or _PLACEHOLDER.fullmatch(word[start:at]):
        return None
    return start, at


def _mask_word(match: re.Match) -> str:
    word = match.group()
    span = _credentials_span(word)
    return word if span is None else word[:span[0]] + MASK + word[span[1]:]


def secrets_in(url: str) -> set[str]:
    """The credentials a connection string holds, as they may appear elsewhere in a message: the whole
    `user:password`, the password alone, each raw and URL-decoded."""
    found: set[str] = set()
    for match in _WORD.finditer(url):
        span = _credentials_span(match.group())
        if span is None:
            continue
        credentials = match.group()[span[0]:span[1]]
        password = credentials.partition(":")[2]
        found |= {credentials, unquote(credentials)} | ({password, unquote(password)} if password else set())
    return {secret for secret in found if len(secret) >= 3}  # a one-letter password would mask every letter


def redact(text: str, *urls: str) -> str:
    """`text` with the credentials of every connection string in it masked, and those of `urls` (which a
    library may quote in another form, e.g. `password=...` or URL-decoded) masked wherever they appear."""
    for secret in sorted({s for url in urls for s in secrets_in(url)}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _WORD.sub(_mask_word, text)
