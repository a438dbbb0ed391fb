"""Cursor pagination: iterate a `CursorPage` and it fetches the following pages as needed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["CursorPage"]


class CursorPage(Generic[T]):
    """One page of a list, which iterates over every item of every following page.

    Attributes:
        data: this page's items.
        has_more: whether a following page exists.
        first_id / last_id: the cursors of this page (``after=last_id`` gives the next page).

    Example:
        >>> for job in client.tunings.list(status="running"):   # all pages, fetched lazily
        ...     print(job.id)
        >>> page = client.tunings.list(limit=10); page.data      # just the first ten
    """

    def __init__(
        self,
        body: Mapping[str, Any],
        *,
        parse: Callable[[Mapping[str, Any]], T],
        fetch: Callable[[str], Mapping[str, Any]],
    ) -> None:
        raw = body.get("data")
        self.data: list[T] = [parse(item) for item in raw] if isinstance(raw, list) else []
        self.has_more = bool(body.get("has_more", False))
        self.first_id: str | None = body.get("first_id")
        self.last_id: str | None = body.get("last_id")
        if self.last_id is None and isinstance(raw, list) and raw and isinstance(raw[-1], Mapping):
            self.last_id = raw[-1].get("id")
        self._parse = parse
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.has_more and bool(self.data) and self.last_id is not None

    def next_page(self) -> CursorPage[T] | None:
        """Fetch the following page, or None when this is the last one."""
        if not self.has_next_page():
            return None
        assert self.last_id is not None
        return CursorPage(self._fetch(self.last_id), parse=self._parse, fetch=self._fetch)

    def iter_pages(self) -> Iterator[CursorPage[T]]:
        """This page, then each following page."""
        page: CursorPage[T] | None = self
        while page is not None:
            yield page
            page = page.next_page()

    def __iter__(self) -> Iterator[T]:
        for page in self.iter_pages():
            yield from page.data

    def __repr__(self) -> str:
        return f"CursorPage(items={len(self.data)}, has_more={self.has_more}, last_id={self.last_id!r})"
