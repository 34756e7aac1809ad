"""Where a document's text sits in a record: the one rule that data build, the trainer and the analysis share.

A record is a string (the text itself) or a mapping with a ``text`` field, or failing that a
``content`` field (the name several code and web datasets use). A table (parquet, a ``datasets``
dataset) has a ``text`` or a ``content`` column, looked up the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TEXT_FIELDS = ("text", "content")
"""Field (column) names that hold a document's text, in order of preference."""


def text_field(names: Iterable[str]) -> str | None:
    """The first of ``TEXT_FIELDS`` among ``names`` (a record's keys or a table's columns), else None."""
    names = set(names)
    return next((f for f in TEXT_FIELDS if f in names), None)


def no_text_field(where: str, names: Iterable[str]) -> str:
    """The message for a table or record without a text field, naming what it has."""
    return f"{where} has no 'text' or 'content' column (columns: {list(names)})."


def record_text(record: Any) -> str | None:
    """The text of one record (a string, or a mapping's text field), or None when it holds no string."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        field = text_field(record)
        value = record[field] if field else None
        return value if isinstance(value, str) else None
    return None
