"""How far a long chapter has got, written outside the notebook.

A chapter's outputs are its regression reference, so a run cannot print its progress into them (and a kernel's
own standard streams end up there too). With ``EQUINB_PROGRESS_LOG`` naming a file, every training run
(``equinb.setups.run_training``) appends a line there when it starts, after each round and when it ends, or
when it is read from the cache instead; a frozen pass over a dataset (the views' features before training, a
zero-shot evaluation's logits) every half minute and when it ends (``counted``); and a language model's grid of
samples (``equinb.nlg.cached_sample_grid``) after each batch (``equinb.cache.load_or_compute``'s
``progress_label`` says when a result was loaded instead): ``tail -f`` the file. ``tools/build_book.py`` sets
it for each chapter it runs (``_build/executed/notebooks/<id>.progress.log``), names it as the chapter starts and
quotes its last line when the chapter fails. Nothing is written where the variable is unset.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

PROGRESS_ENV = "EQUINB_PROGRESS_LOG"

__all__ = ["PROGRESS_ENV", "report", "counted", "RoundClock"]

_Item = TypeVar("_Item")

_failed_paths: set[str] = set()


def report(line: str) -> None:
    """Append ``line``, after the time of day, to the file ``EQUINB_PROGRESS_LOG`` names (nothing if unset).

    A file that cannot be written warns once and is skipped: progress is for the reader, never a reason to stop
    a run."""
    path = os.environ.get(PROGRESS_ENV, "")
    if not path or path in _failed_paths:
        return
    try:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    except OSError as err:
        _failed_paths.add(path)
        warnings.warn(f"{PROGRESS_ENV}={path} cannot be written ({type(err).__name__}: {err}); no progress lines",
                      stacklevel=2)


class RoundClock(list):
    """The wall-clock rows of one training run (``equinb.engine`` appends one per round), each also reported as a
    progress line: the stage, the round of how many, its time and the stage's time left at the mean pace of its
    rounds so far.

    ``label`` names the run in the lines; ``rounds``: how many rounds each stage has (``{"prefinetune": 5,
    "finetune": 20}``). A plain list as far as the rows go: only ``append`` reports a round (a stopped run's rows
    come back with ``restore``, reported as one line)."""

    def __init__(self, label: str, rounds: dict[str, int]) -> None:
        super().__init__()
        self.label, self.rounds = label, dict(rounds)
        self.resumed = False  # set by ``restore``: the run goes on from a stopped one's save
        self.restored_s = 0.0  # the seconds of the rounds it put back

    def restore(self, rows: list[dict[str, Any]], source: str) -> None:
        """Put back the rows of a stopped run that goes on from ``source`` (a file's name), reported as one line:
        how many rounds of each stage it had done, and their time."""
        self[:] = rows
        self.resumed = True
        self.restored_s = sum(r["seconds"] + r["evaluation_seconds"] for r in rows)
        done = ", ".join(f"{stage} {sum(r['stage'] == stage for r in rows)} of {total}"
                         for stage, total in self.rounds.items())
        report(f"{self.label}: resumed from {source} (rounds done: {done}; {self.restored_s:.1f} s of rounds before "
               "the stop)")

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        stage, done = row["stage"], row["round"] + 1
        total = self.rounds.get(stage, 0)
        spent = [r["seconds"] + r["evaluation_seconds"] for r in self if r["stage"] == stage]
        left = (total - done) * sum(spent) / len(spent)
        report(f"{self.label}: {stage} round {done} of {total}, {row['steps']} steps in {row['seconds']:.1f} s"
               f" (+{row['evaluation_seconds']:.1f} s evaluating)"
               + (f"; about {left:.0f} s left in {stage}" if done < total else ""))


def counted(items: Iterable[_Item], label: str, total: int | None = None, every_s: float = 30.0) -> Iterator[_Item]:
    """``items``, unchanged, reporting how many have passed: at most one line every ``every_s`` seconds (with the
    time left at the mean pace so far, where ``total`` is known) and one when they are exhausted. For passes of
    minutes with no rounds to report, such as a frozen encoder over a paper-size test split."""
    began = last = time.perf_counter()
    done = 0
    for done, item in enumerate(items, start=1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s and (total is None or done < total):
            last = now
            left = "" if total is None else f"; about {(total - done) * (now - began) / done:.0f} s left"
            report(f"{label}: {done}" + ("" if total is None else f" of {total}") + f" batches{left}")
    report(f"{label}: {done} batches in {time.perf_counter() - began:.1f} s")
