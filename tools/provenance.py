"""What ran each chapter of a book build: the record written beside every executed chapter, and the book's
execution page made from those records.

`tools/build_book.py` writes `_build/executed/notebooks/<id>.run.json` after a chapter runs (profile, wall time,
start, commit, Python/torch/numpy versions, device and the processor or GPU behind it) and, when it stages the
book, replaces `book/execution.md` with a table of those records.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

from equinb.cache import atomic_write_text
from numerical_modes import available_cores

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("chapter", "profile", "wall (s)", "started (UTC)", "device", "threads")  # per chapter
ENVIRONMENT = ("commit", "hardware", "python", "torch", "numpy")  # once, or per chapter where they differ


@lru_cache(maxsize=1)
def _environment() -> dict[str, str]:
    """Versions and the commit, the same for every chapter of one build."""
    import numpy
    import torch

    def git(*args: str) -> str:  # "" where git fails or is not installed (a bare GPU machine)
        try:
            result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        except FileNotFoundError:
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " + local changes"
    return {"commit": commit, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__}


def _processor() -> str:
    """The CPU's model name (Linux) or what ``platform`` knows, with its widest vector extension (which sets the
    numerical path a trained number takes: two CPUs of one model name may differ) and the cores this process may
    use."""
    name, extension = platform.processor() or platform.machine(), ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), name)
        flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
        extension = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                                    ("sse4_2", "SSE4.2")) if flag in flags), "")
    return f"{name}{f' ({extension})' if extension else ''}, {available_cores()} cores"


def record(nb_id: str, profile: str, started: float, seconds: float, device: str, threads: int | None = None,
           at_once: int = 1) -> dict:
    """The provenance of one executed chapter (``started``: a Unix time; ``threads``: the CPU threads its kernel
    was given, None for all the cores; ``at_once``: how many chapters the build ran at the same time)."""
    hardware = _processor()
    if device.startswith("cuda"):
        import torch

        hardware = f"{torch.cuda.get_device_name(torch.device(device))}; {hardware}"
    start = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    shown = "all cores" if threads is None else str(threads)
    return {"chapter": nb_id, "profile": profile, "wall (s)": round(seconds), "started (UTC)": start,
            **_environment(), "device": device, "hardware": hardware,
            "threads": shown + (f" ({at_once} chapters at a time)" if at_once > 1 else "")}


def write(path: Path, entry: dict) -> None:
    """Write a chapter's record atomically: an interrupted build never leaves half a record for the book."""
    atomic_write_text(path, json.dumps(entry, indent=1) + "\n")


def _row(values: list) -> str:
    # U+2011 (a hyphen no line breaks at) keeps dates and versions on one line in a narrow column
    return "| " + " | ".join(str(v).replace("|", "/").replace("-", "\u2011") for v in values) + " |"


def execution_page(records: list[dict]) -> str:
    """The book's execution page (MyST Markdown): one row per chapter and the build's total, then the environment
    (one row when every chapter shares it)."""
    lines = ["# Execution", "",
             "How this build of the book was computed: each chapter's profile, wall time, start, device and threads,",
             "then the commit of the repository, the hardware and the versions that ran it. `make book` writes this",
             "page from the record it keeps beside every executed chapter.", ""]
    if not records:
        return "\n".join(lines + ["No chapter of this build has an execution record.", ""])
    lines += [_row(FIELDS), "|" + "---|" * len(FIELDS)]
    lines += [_row([entry.get(field, "—") for field in FIELDS]) for entry in records]
    total = sum(entry.get("wall (s)", 0) for entry in records)
    together = " Chapters that ran at the same time overlap in it, so the build took less." \
        if any("at a time" in str(entry.get("threads", "")) for entry in records) else ""
    lines += ["", f"Total wall time of the chapters: {total} s ({total / 60:.1f} min).{together}", "",
              "## Environment", ""]
    environments = {tuple(entry.get(field, "—") for field in ENVIRONMENT) for entry in records}
    if len(environments) == 1:
        lines += [f"- **{field}**: {value}" for field, value in zip(ENVIRONMENT, environments.pop())]
    else:
        lines += [_row(("chapter",) + ENVIRONMENT), "|" + "---|" * (len(ENVIRONMENT) + 1)]
        lines += [_row([entry["chapter"]] + [entry.get(field, "—") for field in ENVIRONMENT]) for entry in records]
    return "\n".join(lines + [""])
