"""How long the cyclic garbage collector ran, per generation: part of "where the time goes"."""

from __future__ import annotations

import gc
import time


class GcClock:
    """Accumulates collection counts and seconds per generation while installed."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.counts[generation] += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def report(self) -> dict:
        return {"collections": list(self.counts), "seconds": [round(s, 4) for s in self.seconds],
                "tracked_objects": len(gc.get_objects())}
