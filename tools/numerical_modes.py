"""Numerical modes: environment switches that make one machine compute the way another x86 CPU would.

Two CPUs differ in the code paths their libraries pick: MKL's (matrix products; `MKL_CBWR` pins one of SSE4_2,
AVX, AVX2 or AVX512 as a CPU offers them, or the bit-reproducible COMPATIBLE when a user asks), oneDNN's
(convolutions; `ONEDNN_MAX_CPU_ISA` caps it at SSE41, AVX, AVX2 or AVX512_CORE), torch's own kernels
(`ATEN_CPU_CAPABILITY`: default, i.e. no vector extension, or avx2), and the number of threads (1, 2, 4). Each mode
below is one combination; `MEASURED` covers every value of every variable that a CPU picks by itself at least once,
which is how `tools/measure_noise.py` measures the tolerances. `make test-portable` (`tools/test_portable.py`) runs
the book and the tests under `PORTABLE`; `HOLDOUT` are combinations the measurement never saw, to check that the
tolerances carry over. Variables must be set before torch is imported: the tools pass them to fresh processes.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mode(mkl: str | None, onednn: str | None, aten: str | None, threads: int | None) -> dict[str, str]:
    env = {"MKL_CBWR": mkl, "ONEDNN_MAX_CPU_ISA": onednn, "ATEN_CPU_CAPABILITY": aten}
    if threads is not None:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return {k: v for k, v in env.items() if v is not None}


MODES: dict[str, dict[str, str]] = {
    # whatever this CPU offers, all cores: the reference outputs' mode (made so on a 2-core AVX-512 machine, Zen 4)
    "native": {},
    # an AVX2 machine with one core
    "avx2-1thread": _mode("AVX2", "AVX2", "avx2", 1),
    # an old SSE machine, four threads on two cores
    "sse-4threads": _mode("SSE4_2", "SSE41", "default", 4),
    # an AVX machine without AVX2 (Sandy Bridge, Ivy Bridge): MKL and oneDNN on AVX, torch's plain kernels, two threads
    "avx-2threads": _mode("AVX", "AVX", "default", 2),
    # MKL's bit-reproducible path (no CPU takes it unless asked: MKL_CBWR=COMPATIBLE), oneDNN on AVX, two threads
    "compat-avx-2threads": _mode("COMPATIBLE", "AVX", "default", 2),
    # an AVX-512 server whose job has one core
    "avx512-1thread": _mode("AVX512", "AVX512_CORE", "avx2", 1),
    # a mixed machine: MKL on AVX, oneDNN on AVX2, four threads
    "avx-avx2-4threads": _mode("AVX", "AVX2", "avx2", 4),
    # combinations the measurement did not include (HOLDOUT)
    "sse-avx512-2threads": _mode("SSE4_2", "AVX512_CORE", "avx2", 2),
    "avx2-sse-1thread": _mode("AVX2", "SSE41", "default", 1),
}
MEASURED = ("avx2-1thread", "sse-4threads", "avx-2threads", "avx512-1thread", "avx-avx2-4threads")
# compat-avx-2threads is measured by nothing by default: MKL's COMPATIBLE path is one a user asks for, not one a CPU
# picks, and with ATen's plain kernels Table 1 alone takes over 20 minutes there on a 2-core machine
PORTABLE = ("avx2-1thread", "sse-4threads", "avx512-1thread", "avx-avx2-4threads")
HOLDOUT = ("sse-avx512-2threads", "avx2-sse-1thread")


def mode_env(name: str) -> dict[str, str]:
    """The environment variables of mode ``name``; unknown names list the valid ones (a thread count: see
    ``thread_env``)."""
    if name not in MODES:
        raise SystemExit(f"unknown numerical mode {name!r}; valid: {', '.join(MODES)}")
    env = dict(MODES[name])
    if "OMP_NUM_THREADS" in env:
        env |= thread_env(int(env["OMP_NUM_THREADS"]))
    return env


def available_cores() -> int:
    """The cores this process may use (its affinity where the platform has one, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that make every notebook kernel (papermill's and nbval's) compute on ``threads``
    threads.

    torch takes its thread count from the cores it sees, not from ``OMP_NUM_THREADS`` alone, so ``IPYTHONDIR``
    points at a profile whose startup file calls ``torch.set_num_threads``.
    """
    startup = ROOT / "_build" / "ipython" / f"threads-{threads}" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-threads.py").write_text(f"import torch\ntorch.set_num_threads({threads})\n")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "IPYTHONDIR": str(startup.parents[1])}
