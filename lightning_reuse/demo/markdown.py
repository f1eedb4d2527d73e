"""The demo's two table helpers: markdown for the report, aligned plain text for the terminal."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table of ``rows`` under ``header``.

    Example:
        >>> print(markdown_table(["a", "b"], [["1", "2"]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """``rows`` under ``header`` as aligned plain-text lines (columns padded to their widest cell).

    Example:
        >>> print("\\n".join(text_table(["a", "bb"], [["10", "2"]])))
        a   bb
        --  --
        10  2
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return [*lines, *("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)]
