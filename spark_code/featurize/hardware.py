"""Which CNN engine and precision this CPU runs best: OpenVINO in bf16 where the CPU has native bf16, else fp32."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CPUINFO = "/proc/cpuinfo"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # Intel Sapphire Rapids+ (AMX) and AMD Zen 4+/Intel Cooper Lake (AVX-512)
RUNTIMES = ("onnx", "openvino", "tensorflow")  # what runs the model; FRUITS_ENGINE may also say "auto"
AUTO = "auto"
FP32, BF16 = "fp32", "bf16"


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo` (Linux' /proc/cpuinfo); empty where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def this_cpu() -> frozenset[str]:
    """This machine's CPU flags, read once per process."""
    return cpu_flags()


def native_bf16(flags: frozenset[str]) -> tuple[str, ...]:
    """The flags of `flags` that give native bf16 dot products (empty: none)."""
    return tuple(flag for flag in BF16_FLAGS if flag in flags)


@dataclass(frozen=True)
class EngineChoice:
    """A runtime and the precision it computes in, and why it was chosen."""

    runtime: str
    precision: str
    reason: str

    @property
    def label(self) -> str:
        """`runtime-precision`, as the `cnn_model` column and the metadata record it."""
        return f"{self.runtime}-{self.precision}"


def choose(requested: str, flags: frozenset[str] | None = None) -> EngineChoice:
    """The engine for `requested` (FRUITS_ENGINE: auto or a runtime) on a CPU with `flags` (default: this one).

    auto: OpenVINO in bf16 where the CPU has native bf16, else ONNX Runtime in fp32 (the fastest fp32 engine measured
    here). openvino: bf16 where the CPU has it, else fp32. onnx and tensorflow: fp32.
    """
    if requested != AUTO and requested not in RUNTIMES:
        raise ValueError(
            f"CNN engine {requested!r} is not one of {(AUTO, *RUNTIMES)}: set FRUITS_ENGINE to one of them"
        )
    bf16 = native_bf16(this_cpu() if flags is None else flags)
    if requested in (AUTO, "openvino") and bf16:
        return EngineChoice("openvino", BF16, f"the CPU has native bf16 ({', '.join(bf16)})")
    if requested == AUTO:
        return EngineChoice("onnx", FP32, "the CPU has no native bf16 (no amx_bf16 or avx512_bf16)")
    why = "forced by FRUITS_ENGINE" + ("" if requested != "openvino" else ", no native bf16 on this CPU")
    return EngineChoice(requested, FP32, why)


_LOGGED: set[EngineChoice] = set()


def log_once(choice: EngineChoice) -> None:
    """Say which engine runs the CNN, once per process and choice."""
    if choice not in _LOGGED:
        _LOGGED.add(choice)
        logger.info("CNN engine: %s in %s (%s)", choice.runtime, choice.precision, choice.reason)


def require_bf16_here(where: str = "this machine", flags: frozenset[str] | None = None) -> None:
    """A clear error where a bf16 model is built on a CPU (`flags`, default: this one) without native bf16: the
    features would not match the table's."""
    if not native_bf16(this_cpu() if flags is None else flags):
        raise RuntimeError(
            f"the CNN was chosen in bf16 but {where}'s CPU has no native bf16 (amx_bf16 or avx512_bf16): run every "
            "node on a bf16 instance family (m7i/c7i/r7i, m7a/c7a/r7a), or set FRUITS_ENGINE=onnx everywhere"
        )
