"""Errors users see. Each names where the problem is so it can be fixed without a debugger."""

from __future__ import annotations


class ReasonrecError(Exception):
    """Base class for errors that carry a message meant for the user."""


class DataError(ReasonrecError):
    """Bad input data: names the file, the line or row, and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = []
        if file:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{message}")


class AssetMissing(ReasonrecError):
    """An embedded model or dataset package is not installed."""


class BackendUnavailable(ReasonrecError):
    """An LLM server cannot be reached or refuses us (names the URL and the cause). Nothing that
    failed this way is stored, so a rerun generates it.

    partial: when a call stopped half-way, what it got back, shaped like the call's result, None
    where a prompt got no answer: texts the server did answer need not be asked for again."""

    def __init__(self, message: str, partial: list | None = None):
        super().__init__(message)
        self.partial = partial

    def __reduce__(self):
        # keeps `partial` when the error travels between processes (a Ray actor to the driver)
        return type(self), (str(self), self.partial)
