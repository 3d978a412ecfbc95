"""Paging of list answers, as the kaggle client asks for them (pageSize, pageToken or page), for the
competition calls (server.py) and the dataset and kernel calls (code_api.py) alike."""
from __future__ import annotations

MAX_PAGE_SIZE = 1000


def page_of(items: list, request: dict, default_size: int = 20) -> tuple[list, str]:
    """Offset paging: the page token is the offset of the next page as text ("" when there is none)."""
    size = min(max(int(request.get("pageSize") or default_size), 1), MAX_PAGE_SIZE)
    token = str(request.get("pageToken") or "")
    start = int(token) if token.isdigit() else max(int(request.get("page") or 1) - 1, 0) * size
    chunk = items[start:start + size]
    return chunk, (str(start + size) if start + size < len(items) else "")
