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
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale or unit == "µs":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return "-"


def format_error(value: float) -> str:
    """An error magnitude in scientific notation, ``-`` when not measured."""
    if not math.isfinite(value):
        return "-"
    return "0" if value == 0 else f"{value:.1e}"


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
