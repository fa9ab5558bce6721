"""Formatting helpers shared by the CLI commands (numbers, sizes, shapes, tables)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table

Dims = Sequence[int | str | None]


def human_bytes(count: int | float | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``unknown``."""
    if count is None:
        return "unknown"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_count(count: int) -> str:
    """``1234567`` -> ``1.23 M``; small counts stay exact."""
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return str(count)


def format_shape(shape: Dims | None) -> str:
    """``[1, 'batch', None]`` -> ``[1, batch, ?]``; None -> ``unknown``."""
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_seconds(seconds: float | None) -> str:
    """Seconds at a readable precision: ``0.0123`` -> ``12.3 ms``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_error(value: float) -> str:
    """An error magnitude in scientific notation, ``-`` when not measured."""
    return f"{value:.2e}" if math.isfinite(value) else "-"


def percent(part: int, whole: int) -> str:
    """``part/whole`` as a percentage, ``-`` for an empty whole."""
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def make_table(title: str | None, *columns: str, right: Sequence[str] = ()) -> Table:
    """A rich table with the given column headers; those named in ``right`` are right-aligned."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left",
                         overflow="fold")
    return table
