"""Progress of a long Spark pass over images: done / total, images/s and ETA, logged every ~10 s from a thread."""

import logging
import threading
import time

logger = logging.getLogger(__name__)

EVERY_S = 10.0  # between two progress lines, unless the run's tag says otherwise
SECONDS_TAG = "fruits/progress_seconds"  # a run's own interval (the main command's --progress-seconds)


def every_s(tags: dict[str, str]) -> float:
    """Seconds between two progress lines for a run with these tags."""
    return float(tags.get(SECONDS_TAG, EVERY_S))


def duration(seconds: float) -> str:
    """`1 min 49 s`, `2 h 5 min`, `12 s`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class SparkProgress:
    """Logs `name: done/total images, rate, ETA` while Spark works, and a closing line; use as a context manager.

    `done` is the driver-side value of `counter` (a Spark accumulator that tasks add their images to), which grows
    as tasks finish; without one it is the share of finished tasks of the active stages times `total`. The task
    counts come from the status tracker.
    """

    def __init__(self, spark_context, name: str, total: int, counter=None, every_s: float = EVERY_S):
        self.tracker, self.name, self.total, self.counter = spark_context.statusTracker(), name, total, counter
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress-{name}", daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> "SparkProgress":
        self.started = time.monotonic()
        logger.info("%s: %s images to go through", self.name, f"{self.total:,}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self.started
        if exc[0] is None:
            rate = self.total / elapsed if elapsed > 0 else 0.0
            logger.info("%s: %s images in %s (%.1f images/s)", self.name, f"{self.total:,}", duration(elapsed), rate)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                logger.info(self.line())
            except Exception as error:  # the Spark context may be stopping; progress must never fail the run
                logger.debug("progress unavailable: %s", error)

    def tasks(self) -> tuple[int, int, int]:
        """(finished, running, all) tasks of the active stages."""
        infos = [self.tracker.getStageInfo(stage) for stage in self.tracker.getActiveStageIds()]
        infos = [info for info in infos if info is not None]
        return tuple(
            sum(getattr(info, field) for info in infos) for field in ("numCompletedTasks", "numActiveTasks", "numTasks")
        )

    def done(self, finished: int, all_tasks: int) -> int:
        """Images done so far (see the class docstring)."""
        if self.counter is not None:
            return min(self.total, int(self.counter.value))
        return self.total * finished // all_tasks if all_tasks else 0

    def line(self) -> str:
        """One progress line: images done/total, tasks, images/s and ETA once some are done."""
        finished, running, all_tasks = self.tasks()
        done, elapsed = self.done(finished, all_tasks), time.monotonic() - self.started
        head = f"{self.name}: {done:,}/{self.total:,} images"
        if all_tasks:
            head += f" (tasks {finished}/{all_tasks} done, {running} running)"
        if done == 0:
            return f"{head}, {duration(elapsed)} elapsed, first results when the first tasks finish"
        rate = done / elapsed
        return f"{head}, {rate:.1f} images/s, ETA {duration((self.total - done) / rate)}"
