"""A clock the test controls, so cache TTLs expire on demand instead of after real minutes."""

from __future__ import annotations

import threading
import time


class Clock:
    """Seconds since the emulator started; ``advance`` jumps ahead. ``follow_wall`` also lets real time pass."""

    def __init__(self, start: float = 0.0, *, follow_wall: bool = False) -> None:
        self._offset = start
        self._follow_wall = follow_wall
        self._origin = time.monotonic()
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            elapsed = time.monotonic() - self._origin if self._follow_wall else 0.0
            return self._offset + elapsed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back in time (advance({seconds}))")
        with self._lock:
            self._offset += seconds
