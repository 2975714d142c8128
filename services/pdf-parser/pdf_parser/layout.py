"""Words and lines of a page, wherever they were read from (text layer or OCR), in PDF points
measured from the page's top-left corner, so every reader below works on one shape."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Box", "Line", "Word", "group_lines", "words_within"]

Box = tuple[float, float, float, float]  # x0, top, x1, bottom (points)


@dataclass(frozen=True, kw_only=True)
class Word:
    text: str
    box: Box
    confidence: float = 1.0  # 0-1: Tesseract's word confidence, 1.0 from a text layer

    @property
    def centre(self) -> tuple[float, float]:
        x0, top, x1, bottom = self.box
        return (x0 + x1) / 2, (top + bottom) / 2


@dataclass(frozen=True)
class Line:
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)

    @property
    def top(self) -> float:
        return min(word.box[1] for word in self.words)

    def spans(self) -> list[tuple[int, int, Word]]:
        """Each word with its (start, end) offsets in `text`."""
        found, position = [], 0
        for word in self.words:
            found.append((position, position + len(word.text), word))
            position += len(word.text) + 1
        return found

    def confidence(self, start: int, end: int) -> float:
        """The lowest confidence of the words that overlap text[start:end]."""
        overlapping = [w.confidence for s, e, w in self.spans() if s < end and e > start]
        return min(overlapping, default=0.0)


def group_lines(words: Iterable[Word], *, tolerance: float = 3.0) -> list[Line]:
    """Words whose vertical centres lie within `tolerance` points of each other form a line,
    read left to right; lines top to bottom."""
    rows: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (w.centre[1], w.box[0])):
        if rows and abs(rows[-1][0].centre[1] - word.centre[1]) <= tolerance:
            rows[-1].append(word)
        else:
            rows.append([word])
    return [Line(tuple(sorted(row, key=lambda w: w.box[0]))) for row in rows]


def words_within(words: Sequence[Word], box: Box) -> list[Word]:
    x0, top, x1, bottom = box
    return [w for w in words if x0 <= w.centre[0] <= x1 and top <= w.centre[1] <= bottom]
