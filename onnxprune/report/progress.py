"""Stage lines on stderr. A leaf module with nothing but the standard library: the command line
creates its Progress before the heavy imports (issue #14 item 14)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Stage lines on stderr with elapsed time; quiet when asked. Keeps stdout for results.

    Inside a long stage (a latency table), a terminal gets one line redrawn in place; a log file or
    pipe gets a plain line every `log_every_s` seconds, so a piped run shows it is alive."""

    def __init__(self, enabled: bool = True, stream=None, log_every_s: float = 5.0):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.log_every_s = log_every_s
        self.timings: dict[str, float] = {}
        self._t0 = None
        self._name = None
        self._open = False  # the stage's line waits for its time
        self._last_log = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def start(self, name: str, detail: str = ""):
        self._end()
        self._name, self._t0 = name, time.perf_counter()
        self._detail = detail
        self._last_log = self._t0
        if self.enabled:
            self._write(f"  {name}{' ' + detail if detail else ''} ...")
            self._open = True

    def _end(self):
        if self._name is not None:
            dt = time.perf_counter() - self._t0
            self.timings[self._name] = round(self.timings.get(self._name, 0.0) + dt, 4)
            if self.enabled:
                self._write(f" {dt:.2f}s\n" if self._open else f"  {self._name} done {dt:.2f}s\n")
            self._name, self._open = None, False

    def update(self, i: int, n: int):
        """Step i of n inside a long stage (latency profiling)."""
        if not self.enabled or self._name is None:
            return
        now = time.perf_counter()
        el = now - self._t0
        eta = f", ~{el / i * (n - i):.0f}s left" if i else ""
        if self._tty():
            self._write(f"\r  {self._name} ... {i}/{n} ({el:.0f}s{eta})   ")
        elif i and now - self._last_log >= self.log_every_s:
            self._write(("\n" if self._open else "") + f"  {self._name} ... {i}/{n} ({el:.0f}s{eta})\n")
            self._open, self._last_log = False, now

    def done(self):
        self._end()

    def abort(self):
        """End a half-written stage line so an error message starts on its own line."""
        if self._name is not None and self.enabled and self._open:
            self._write(" failed\n")
        self._name, self._open = None, False
