"""The one redaction (competition/redaction.py): credentials in a connection string are masked however
the string is mistyped; text that holds none is left alone."""
from __future__ import annotations

import pytest

from competition.redaction import redact

SECRET = "WrongSecret123"


@pytest.mark.parametrize("url, shown", [
    ("postgresql://kpipe:WrongSecret123@127.0.0.1:5432/db", "postgresql://***@127.0.0.1:5432/db"),
    ("postgresql:/kpipe:WrongSecret123@127.0.0.1/db", "postgresql:/***@127.0.0.1/db"),
    ("postgresql//kpipe:WrongSecret123@127.0.0.1/db", "postgresql//***@127.0.0.1/db"),
    ("postgresql:kpipe:WrongSecret123@127.0.0.1/db", "postgresql:***@127.0.0.1/db"),
    ("postgresql:\\\\kpipe:WrongSecret123@127.0.0.1/db", "postgresql:***@127.0.0.1/db"),
    ("kpipe:WrongSecret123@127.0.0.1/db", "kpipe:***@127.0.0.1/db"),
    ("postgresql+psycopg://kpipe:Wrong%40Secret123@h/db", "postgresql+psycopg://***@h/db"),
    ("postgresql://kpipe:Wrong@Secret123@h/db", "postgresql://***@h/db"),  # an unescaped @ in the password
    ("'postgresql:/kpipe:WrongSecret123@h/db'", "'postgresql:/***@h/db'"),
    ("--storage=postgresql://kpipe:WrongSecret123@h/db", "--storage=postgresql://***@h/db"),
    ("STORAGE=kpipe:WrongSecret123@h/db", "STORAGE=kpipe:***@h/db"),
])
def test_credentials_are_masked_however_the_url_is_mistyped(url, shown):
    text = redact(f"error: Optuna storage {url}: cannot open it")
    assert text == f"error: Optuna storage {shown}: cannot open it"
    assert "Secret123" not in text


def test_a_library_quoting_the_password_another_way_is_masked_too():
    url = "postgresql:/kpipe:Wrong%40Secret123@h/db"
    text = redact("FATAL: password=Wrong@Secret123 and Wrong%40Secret123 refused", url)
    assert "Secret123" not in text and text.count("***") == 2


@pytest.mark.parametrize("text", [
    "mail alice@example.com about it",
    "scheduler at tcp://127.0.0.1:8786 has no workers",
    "git@github.com:owner/repo.git",
    "no @ here: just text",
    "give STORAGE=postgresql://user@host/db",  # an example's placeholder
    "e.g. postgresql://user:password@db-host/optuna",
])
def test_text_without_credentials_is_left_alone(text):
    assert redact(text) == text
