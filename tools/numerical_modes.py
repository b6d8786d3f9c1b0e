"""Numerical modes: environment switches that make one machine compute the way another CPU would.

Two CPUs differ in the vector instructions that torch's own kernels (ATen), oneDNN (convolutions) and MKL
(matrix products) pick, and in the number of threads. Each switch below selects one of those paths on this
machine, so a difference between two modes is the kind of difference two machines show. Variables must be set
before torch is imported: `tools/test_portable.py` and `tools/measure_noise.py` pass them to fresh processes.
"""

from __future__ import annotations

MODES: dict[str, dict[str, str]] = {
    # whatever this CPU offers (AVX-512 on the build machine), all cores
    "native": {},
    # an AVX2 machine with one core: ATen, oneDNN and MKL limited to AVX2, one thread everywhere
    "avx2-1thread": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                     "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}


def mode_env(name: str) -> dict[str, str]:
    """The environment variables of mode ``name``; unknown names list the valid ones."""
    if name not in MODES:
        raise SystemExit(f"unknown numerical mode {name!r}; valid: {', '.join(MODES)}")
    return dict(MODES[name])
