"""What predict prints: the top-k rows of each image as a table, JSON or CSV, and its progress."""

import csv
import dataclasses
import json
import sys

OUTPUT_FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ("image", "rank", "index", "wnid", "label", "probability")
# Progress on stderr: always above this many images, and above the smaller count on a terminal.
PROGRESS_ALWAYS, PROGRESS_TTY = 50, 10
# Without a terminal, progress is one line per this fraction of the images.
PROGRESS_LINE_STEP = 0.1


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    rank: int
    index: int
    wnid: str | None
    label: str
    probability: float

    def as_dict(self):
        row = dataclasses.asdict(self)
        if row["wnid"] is None:
            del row["wnid"]
        return row


class Progress:
    """A dependency-free progress report of `total` images on `stream` (stderr).

    On a terminal one line is redrawn in place (from PROGRESS_TTY images on); elsewhere, from
    PROGRESS_ALWAYS images on, one line is written per tenth of the images.
    """

    def __init__(self, total, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.done = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = total > PROGRESS_ALWAYS or (self.tty and total > PROGRESS_TTY)
        self._next_line = PROGRESS_LINE_STEP
        self._drawn = False

    def _text(self):
        return f"predict: {self.done}/{self.total} images ({100 * self.done // self.total}%)"

    def advance(self, count=1):
        self.done += count
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + self._text())
            self._drawn = True
        elif self.done >= self._next_line * self.total or self.done == self.total:
            self.stream.write(self._text() + "\n")
            while self._next_line * self.total <= self.done:
                self._next_line += PROGRESS_LINE_STEP
        self.stream.flush()

    def clear(self):
        """Removes the redrawn line so that a message can be printed on its own line."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def close(self):
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()


def _table(results, stream):
    show_wnid = any(p.wnid for _, predictions in results for p in predictions)
    header = ["image", "rank", "probability", "index"] + (["wnid"] if show_wnid else []) + ["label"]
    rows = []
    for image, predictions in results:
        for p in predictions:
            row = [image if p.rank == 1 else "", str(p.rank), f"{p.probability:.4f}", str(p.index)]
            row += [p.wnid or ""] if show_wnid else []
            rows.append(row + [p.label])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right = {"rank", "probability", "index"}
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if name in right else cell.ljust(w)
            for cell, w, name in zip(row, widths, header, strict=True)
        ]
        stream.write("  ".join(cells).rstrip() + "\n")


def write_results(results, fmt, stream):
    """Writes [(image, [Prediction, ...]), ...] as a table, JSON or CSV."""
    if fmt == "json":
        rows = [{"image": image, "predictions": [p.as_dict() for p in ps]} for image, ps in results]
        json.dump(rows, stream, indent=1, ensure_ascii=False)
        stream.write("\n")
    elif fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for image, predictions in results:
            for p in predictions:
                writer.writerow([image, p.rank, p.index, p.wnid or "", p.label, p.probability])
    else:
        _table(results, stream)
