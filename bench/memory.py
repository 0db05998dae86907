"""Peak resident memory and CPU seconds of this process and all its descendants (JVM, Python workers), sampled in a
thread."""

import threading

import psutil


class PeakRss:
    """Context manager sampling RSS every `interval` s; peaks per kind: driver, jvm, python_workers, total. It also
    sums the CPU seconds (user + system) of every process of the tree while inside: each process's last reading
    (a process that ends between two readings loses at most `interval` of CPU); this process's own CPU counts from
    its start with `whole_process`, else from entering. Descendants already running on entering are left out (the
    bench's own Spark session is not the measured run's)."""

    def __init__(self, interval: float = 0.25, whole_process: bool = False):
        self.interval = interval
        self.peaks = {"driver": 0, "jvm": 0, "python_workers": 0, "total": 0}
        self._cpu: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, start time) → (kind, CPU seconds)
        self._cpu_before = 0.0 if whole_process else _cpu(psutil.Process())  # whole_process: from its start
        self._before: set[tuple[int, float]] = set()  # descendants already running (e.g. the bench's own Spark)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PeakRss":
        self._before = {(p.pid, p.create_time()) for p in psutil.Process().children(recursive=True)}
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
        self._cpu[(me.pid, me.create_time())] = ("driver", _cpu(me) - self._cpu_before)
        for child in me.children(recursive=True):
            try:
                if (child.pid, child.create_time()) in self._before:
                    continue
                kind = "jvm" if "java" in child.name() else "python_workers"
                sizes[kind] += child.memory_info().rss
                self._cpu[(child.pid, child.create_time())] = (kind, _cpu(child))
            except psutil.NoSuchProcess:
                continue
        sizes["total"] = sum(sizes.values())
        for key, value in sizes.items():
            self.peaks[key] = max(self.peaks[key], value)

    def peak_mib(self) -> dict[str, int]:
        """Peaks in MiB."""
        return {key: value // 2**20 for key, value in self.peaks.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) per kind and in total, of every process seen in the tree."""
        seconds = {"driver": 0.0, "jvm": 0.0, "python_workers": 0.0}
        for kind, value in self._cpu.values():
            seconds[kind] += value
        return {**{k: round(v, 2) for k, v in seconds.items()}, "total": round(sum(seconds.values()), 2)}


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system
