"""One BLAS thread for the driver's many small products: OpenBLAS's threads cost more than they give there."""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# (set, get) entry points of the OpenBLAS builds NumPy and SciPy wheels ship (64-bit and 32-bit integer APIs).
ENTRY_POINTS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
]


def _loaded_openblas() -> list[tuple]:
    """(set, get) functions of every OpenBLAS library loaded in this process (NumPy's, SciPy's)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:  # not Linux: leave the threads as they are
        return []
    found = []
    for path in paths:
        library = ctypes.CDLL(path)
        for set_name, get_name in ENTRY_POINTS:
            if hasattr(library, set_name) and hasattr(library, get_name):
                found.append((getattr(library, set_name), getattr(library, get_name)))
                break
    return found


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """BLAS on one thread inside the block, as before after it.

    A softmax fit's products are small (5,240 × k by k × 131): with OpenBLAS's thread pool on this 2-core machine,
    shared with Spark's workers, one fit took 22× longer (k = 8) to 6× longer (k = 256) than on one thread.
    """
    libraries = _loaded_openblas()
    before = [get() for _, get in libraries]
    for set_threads, _ in libraries:
        set_threads(1)
    try:
        yield
    finally:
        for (set_threads, _), threads in zip(libraries, before, strict=True):
            set_threads(threads)
