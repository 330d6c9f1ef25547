"""Plain-text tables for the benchmarks' results."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Column = tuple[str, Callable[[dict], str]]  # header, row -> cell


def table(rows: Sequence[dict], cols: Sequence[Column]) -> str:
    """The rows right-aligned under their headers, columns two spaces apart."""
    head = [c for c, _ in cols]
    body = [[fmt(r) for _, fmt in cols] for r in rows]
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def key(name: str, fmt: str = "{}") -> Callable[[dict], str]:
    """The cell `fmt.format(row[name])`, or "-" where the row has no `name`."""

    def cell(row: dict) -> str:
        return fmt.format(row[name]) if name in row else "-"

    return cell
