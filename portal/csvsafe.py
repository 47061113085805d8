"""Every CSV the portal writes goes through here, so no cell can run as a spreadsheet formula.

Hospitals' data (a coding's system, code or display, an element name), imported mapping rows, user
names and user agents all end up in exports that people open in Excel, LibreOffice or Google Sheets.
Those programs run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (and a leading
tab or carriage return can hide one), so, as OWASP's "CSV Injection" page and ASVS 1.2.10 ask, such a
cell is prefixed with a single quote, which the spreadsheet takes as "this is text". The NUL
character of ASVS is treated the same way.

Two choices, so that the defusing costs legitimate data as little as possible:
- A number stays a number: Python ints and floats, and strings that are exactly a decimal number
  ("-5", "+1.25"), are written as they are. A bare number cannot be a formula, and prefixing it
  would turn a legitimate negative number into text in the sheet.
- A cell that already starts with a quote is prefixed too, so that ``undefuse`` (used by the mapping
  import) gives back exactly what was exported: an export read back changes nothing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")
QUOTE = "'"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z")


class _Writable(Protocol):
    def write(self, value: str, /) -> Any: ...


def defuse(value: Any) -> Any:
    """One cell, made safe to open in a spreadsheet; numbers and None are left as they are."""
    if value is None or isinstance(value, int | float):
        return value
    cell = str(value)
    if cell[:1] == QUOTE or (cell[:1] in FORMULA_TRIGGERS and not _NUMBER.match(cell)):
        return QUOTE + cell
    return cell


def undefuse(value: str) -> str:
    """The value a defused cell was made from: one leading quote, the spreadsheet's text marker, removed.

    A person who edits the file in a spreadsheet may keep or lose the quote; either way the value
    read back is the one exported.
    """
    return value[1:] if value[:1] == QUOTE else value


class Writer:
    """``csv.writer`` that defuses every cell it writes."""

    def __init__(self, out: _Writable, **fmtparams: Any) -> None:
        self._writer = csv.writer(out, **fmtparams)

    def writerow(self, row: Iterable[Any]) -> Any:
        """Write one row; returns what the underlying file's write returned."""
        return self._writer.writerow([defuse(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        """Write every row."""
        for row in rows:
            self.writerow(row)


def lines(rows: Iterable[Sequence[Any]], **fmtparams: Any) -> Iterator[str]:
    """CSV text of the rows, one line at a time (for a streaming response), every cell defused."""
    writer = Writer(_Echo(), **fmtparams)
    for row in rows:
        yield writer.writerow(row)


def text(rows: Iterable[Sequence[Any]], **fmtparams: Any) -> str:
    """The whole CSV as one string, every cell defused."""
    return "".join(lines(rows, **fmtparams))


class _Echo:
    """A file whose write returns the line, so a csv writer can feed a generator."""

    def write(self, value: str) -> str:
        return value
