"""Raw text files given on the command line (test sets, prompts): read strictly, one clear line when unusable."""

from __future__ import annotations

from pathlib import Path

from kernel_attention.data import DataError
from kernel_attention.data.sources import decode_utf8, split_lines


def read_text(path: str | Path) -> str:
    """The whole file as UTF-8 text; a missing or undecodable file is a ``DataError`` naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p} not found; pass an existing text file")
    return decode_utf8(p.read_bytes(), p)


def read_lines(path: str | Path) -> list[str]:
    """Lines split on '\\n' only (as prepare splits corpora), the final newline ending the last line."""
    return split_lines(read_text(path))
