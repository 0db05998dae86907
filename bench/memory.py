"""Peak resident memory of this process and all its descendants (JVM, Python workers), sampled in a thread."""

import threading

import psutil


class PeakRss:
    """Context manager sampling RSS every `interval` s; peaks per kind: driver, jvm, python_workers, total."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peaks = {"driver": 0, "jvm": 0, "python_workers": 0, "total": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Record one reading of the process tree."""
        me = psutil.Process()
        sizes = {"driver": me.memory_info().rss, "jvm": 0, "python_workers": 0}
        for child in me.children(recursive=True):
            try:
                kind = "jvm" if "java" in child.name() else "python_workers"
                sizes[kind] += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        sizes["total"] = sum(sizes.values())
        for key, value in sizes.items():
            self.peaks[key] = max(self.peaks[key], value)

    def peak_mib(self) -> dict[str, int]:
        """Peaks in MiB."""
        return {key: value // 2**20 for key, value in self.peaks.items()}
