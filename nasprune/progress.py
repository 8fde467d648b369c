"""Progress on a terminal (a tqdm bar) or in a log file (a plain line every few seconds).

Used by the command (:mod:`nasprune.cli`) and the service's client (:mod:`nasprune.client`).
"""

from __future__ import annotations

__all__ = ["LINE_EVERY_S", "LineProgress", "progress_bar"]

LINE_EVERY_S = 5.0


def progress_bar(total: int, desc: str, unit: str = "trial", file=None):
    """A tqdm bar on a terminal; elsewhere (a log file, CI) a :class:`LineProgress` that prints a
    plain line every few seconds instead of a stream of carriage returns."""
    import sys

    file = file or sys.stderr
    if hasattr(file, "isatty") and file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True)
    return LineProgress(total, desc, unit, file)


class LineProgress:
    """The part of tqdm's interface the CLI uses, for output that is not a terminal.

    Prints ``desc: n/total units, postfix (elapsed)`` as a line of its own: at a change of stage
    (description), at the end, and otherwise at most every ``every_s`` seconds.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it", file=None, every_s: float = LINE_EVERY_S):
        import sys
        import time

        self.total, self.desc, self.unit, self.n, self.postfix = total, desc, unit, 0, ""
        self.file = file or sys.stderr
        self.every_s = every_s
        self._t0 = time.monotonic()
        self._last_t: float | None = None
        self._last_line = ""

    def _line(self) -> str:
        import time

        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit}s{post} ({time.monotonic() - self._t0:.0f} s)"

    def _emit(self, force: bool) -> None:
        import time

        now = time.monotonic()
        line = self._line()
        if line.split(" (")[0] == self._last_line.split(" (")[0]:
            return  # nothing new to say
        if force or self._last_t is None or now - self._last_t >= self.every_s:
            print(line, file=self.file, flush=True)
            self._last_t, self._last_line = now, line

    def set_description(self, desc: str, refresh: bool = True) -> None:
        changed = desc != self.desc
        self.desc = desc
        if changed:
            self._emit(force=True)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def update(self, n: int = 1) -> None:
        self.n += n
        self._emit(force=False)

    def refresh(self) -> None:
        self._emit(force=False)

    def write(self, s: str) -> None:
        print(s, file=self.file, flush=True)

    def close(self) -> None:
        self._emit(force=True)
