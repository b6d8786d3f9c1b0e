"""Execute the book's notebooks with papermill and build the HTML book with Jupyter Book 1.

Usage (from the repository root; `make book` and `make chapter` call this):

    .venv/bin/python tools/build_book.py [--profile small|paper] [--no-execute | --reuse] [--keep-going] [--jobs N]
    .venv/bin/python tools/build_book.py --only fig4_zeroshot [--profile paper] [-p seed 5] [-p datasets '[digits]']

`--only ID ...` executes just those chapters into `_build/executed/` (the others stay as they are) and builds no
HTML; `--reuse` executes only the chapters that have no executed copy of the same profile, then builds the HTML;
`--keep-going` runs the remaining chapters after one fails and reports every failure at the end; `--jobs N` runs N
chapters at the same time, each kernel on its share of the cores (default: 2 on the small profile where there are 2
cores or more, since a small model's operations use a second thread poorly; 1 otherwise). `-p NAME VALUE`
(the value is read as YAML, `-5e-8` included) overrides a parameter; a name that the chapter's parameters cell does
not declare is refused with the valid names (papermill itself would only warn and run the defaults). A run with
changed parameters is also copied to `_build/variants/<id>.<parameters>.ipynb`, which later builds leave alone: the
book shows each profile's own runs.

Steps:
  1. Read the chapter ids from `_toc.yml` (every `file: notebooks/<id>` entry).
  2. Execute each `notebooks/<id>.py` (jupytext py:percent) with papermill into
     `_build/executed/notebooks/<id>.ipynb`, in `notebooks/` as working directory. The small profile uses the
     notebook's own defaults; any other profile passes `-f notebooks/params/<id>.<profile>.yaml`.
     The committed paired `notebooks/<id>.ipynb` is never written.
     Beside each: `<id>.run.json`, what ran it (`tools/provenance.py`); the chapters file the numbers of their
     tables and figures as CSVs under `_build/executed/data/<id>/` (`$EQUINB_DATA_OUT`).
  3. Stage `_build/src/` = `_config.yml` + `_toc.yml` + `book/` + the executed notebooks, with `book/execution.md`
     written from the run records, and run `jupyter-book build _build/src -W --path-output _build/jb` (execution
     is off in `_config.yml`).
  4. Copy the HTML to `_build/html/`, and the CSVs to `_build/html/data/` (the last book stays until then).

A failed or interrupted chapter keeps its last good executed copy and tables. `$EQUINB_BUILD` moves `_build/`
elsewhere (`tools/test_portable.py` builds each numerical mode's book in its own folder).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NoReturn

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diagrams  # noqa: E402
import provenance  # noqa: E402
from numerical_modes import available_cores, thread_env  # noqa: E402

from equinb.cache import atomic_write_text  # noqa: E402
from equinb import chapter  # noqa: E402
from equinb.chapter import (LOCATION_PARAMETERS, RUN_PARAMETERS_ENV, parameters_cell,  # noqa: E402
                            profile_parameters_file)
from equinb.progress import PROGRESS_ENV  # noqa: E402
from equinb.tables import DATA_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin/, where jupyter-book lives
# jupytext and papermill run as modules of this interpreter: that works wherever they are importable, also from a
# `pip install --target` folder on PYTHONPATH, which puts no scripts next to the interpreter (an offline GPU box).
MODULE = [sys.executable, "-m"]
BUILD = Path(os.environ.get("EQUINB_BUILD") or ROOT / "_build").resolve()  # tools/test_portable.py sets its own
EXECUTED = BUILD / "executed"
VARIANTS = BUILD / "variants"  # chapter runs with changed parameters (make chapter ARGS="-p ..."), kept apart
STAGE = BUILD / "src"
JB_OUT = BUILD / "jb"
HTML = BUILD / "html"
# Pages computed from the executed chapters (they read their glued verdicts): executed after them, always again
# when the HTML is built, with ``chapters_dir`` pointing at the executed chapters.
AGGREGATES = ("claim_list",)
# Chapters whose tables time code: run on their own, on every core, before the others (no other chapter's work enters
# their timings, whatever --jobs is).
TIMED = ("own_model",)


def in_execution_order(ids: list[str]) -> list[str]:
    """``ids`` with the pages that read the executed chapters (``AGGREGATES``) after them, wherever ``_toc.yml``
    lists those pages for the reader; the rest keep their order."""
    return sorted(ids, key=lambda i: i in AGGREGATES)


def rel(path: Path) -> str:
    """A path relative to the repository root when it is inside it (for messages)."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class ChapterFailed(RuntimeError):
    """A chapter could not be executed (the message says which and why)."""


class ChapterStopped(ChapterFailed):
    """A chapter ran past the time it was given and was stopped (``execute``'s ``timeout_s``)."""


def fail(msg: str) -> NoReturn:
    print(f"build_book: error: {msg}", file=sys.stderr)
    sys.exit(2)


def chapter_parameters(nb_id: str) -> list[str]:
    """The names declared in a chapter's parameters cell (``equinb.chapter.parameters_cell``)."""
    return parameters_cell(nb_id, ROOT / "notebooks")[0]


def check_parameter_names(nb_id: str, names, source: str) -> None:
    """Refuse parameter names the chapter does not declare, naming the ones it does."""
    declared = chapter_parameters(nb_id)
    unknown = [n for n in names if n not in declared]
    if unknown:
        fail(f"{source}: notebooks/{nb_id} has no parameter {', '.join(map(repr, unknown))}; "
             f"its parameters are: {', '.join(declared)}")


def toc_files(node) -> list[str]:
    """Every `file:` entry of a jb-book `_toc.yml`, in reading order."""
    found: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                found.append(node[key])
        for value in node.values():
            if isinstance(value, (list, dict)):
                found += toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found += toc_files(item)
    return found


def notebook_ids(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """The notebook ids listed in `_toc.yml` (entries `notebooks/<id>`, extension optional)."""
    toc = yaml.safe_load(toc_path.read_text())
    ids = []
    for entry in toc_files(toc):
        path = Path(entry)
        if path.parent == Path("notebooks"):
            ids.append(path.stem if path.suffix in (".ipynb", ".py", ".md") else path.name)
    return ids


def params_file(nb_id: str, profile: str) -> Path | None:
    """The papermill parameter file of a profile (None for small: the notebook's defaults are small)."""
    if profile == "small":
        return None
    path = profile_parameters_file(nb_id, profile)
    if not path.is_file():
        fail(f"profile {profile!r} needs the parameter file {rel(path)} for notebook {nb_id!r}, "
             "and it does not exist")
    check_parameter_names(nb_id, list(yaml.safe_load(path.read_text()) or {}), rel(path))
    return path


def profile_values(nb_id: str, profile: str) -> dict:
    """A chapter's parameters as a profile runs them (``equinb.chapter.profile_values``): the notebook's defaults,
    then the profile's file, which must exist for any profile but the small one and name only declared parameters."""
    params_file(nb_id, profile)
    return chapter.profile_values(nb_id, profile, ROOT / "notebooks" / "params")


def without_own_values(ids: list[str], profile: str, parameters: dict) -> dict:
    """``parameters`` less those that every chapter of ``ids`` already runs with under ``profile``
    (``profile_values``): ``-p seed 0`` on the small profile is its own run, labelled and reused as such."""
    own = [profile_values(nb_id, profile) for nb_id in ids]
    same = {k: v for k, v in parameters.items() if all(k in values and chapter.same_value(values[k], v)
                                                        for values in own)}
    if same:
        print(f"build_book: {parameters_text(same) or ', '.join(same)}: the profile's own value(s), not a change",
              flush=True)
    return {k: v for k, v in parameters.items() if k not in same}


class _ParameterLoader(yaml.SafeLoader):
    """YAML as PyYAML reads it, plus YAML 1.2's exponent floats: ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3``)."""


_ParameterLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                       re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def parameter_value(text: str):
    """A ``-p`` value read as YAML, numbers in any notation, also inside lists (``'[1e-3, 2]'``)."""
    return yaml.load(text, Loader=_ParameterLoader)  # a SafeLoader: no arbitrary objects


def take_parameters(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The ``-p NAME VALUE`` pairs of ``argv``, taken verbatim, and the other arguments: argparse would read a
    VALUE such as ``-5e-8`` as an option."""
    rest, pairs, i = [], [], 0
    while i < len(argv):
        if argv[i] in ("-p", "--parameter"):
            if i + 2 >= len(argv):
                fail(f"{argv[i]} needs a NAME and a VALUE, e.g. -p seed 5")
            pairs.append((argv[i + 1], argv[i + 2]))
            i += 3
        else:
            rest.append(argv[i])
            i += 1
    return rest, pairs


def keep_variant(nb_id: str, parameters: dict) -> Path:
    """Copy a chapter run with changed ``parameters`` to ``_build/variants/<id>.<parameters>.ipynb``, where later
    builds leave it (the executed copy is the profile's own run's place). Returns the copy's path."""
    text = parameters_text(parameters)
    slug = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", text.replace(" ", ""))
    if len(slug) > 100:  # a long set of parameters: its start and a hash, so that two sets never share a name
        slug = f"{slug[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    target = VARIANTS / f"{nb_id}.{slug}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXECUTED / "notebooks" / f"{nb_id}.ipynb", target)
    return target


def parameters_text(parameters: dict | None) -> str:
    """The overridden parameters as ``"seed=5, lr=1e-07"`` ("" for none). Those that only say where files are
    (``equinb.chapter.LOCATION_PARAMETERS``: an aggregate's build path, a data folder) change no result and are
    left out, as the kernel leaves them out of its captions."""
    return ", ".join(f"{k}={v!r}" for k, v in (parameters or {}).items() if k not in LOCATION_PARAMETERS)


def run_label(profile: str, parameters: dict | None) -> str:
    """The profile, with the overridden parameters if any: ``small`` or ``small (seed=5)``. A chapter run with
    overrides is recorded so, and never reused as the profile's own run."""
    text = parameters_text(parameters)
    return f"{profile} ({text})" if text else profile


def _papermill_failure(returncode: int, logged: bool = False) -> str:
    if returncode < 0:  # killed by a signal: papermill printed nothing
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # a signal Python has no name for (a real-time one)
            name = str(-returncode)
        return f"papermill was killed by signal {name} (out of memory, or stopped)"
    return "papermill failed" if logged else "papermill failed; see its message above"


_RUNNING: set[subprocess.Popen] = set()  # the child processes running now (several when chapters run together)
STOP_GRACE_S = 30  # an interrupted child's time to save its partial notebook before it is killed


def _run_child(command: list[str], stdin, env: dict, timeout_s: float | None, grace_s: float = STOP_GRACE_S,
               output=None) -> int:
    """The return code of ``command`` (papermill, or nbval's pytest). Past ``timeout_s`` it is interrupted
    (papermill then saves the partly executed notebook and stops its kernel), killed ``grace_s`` later if still
    running, and ``subprocess.TimeoutExpired`` is raised; one that finished as the time ran out gives its return
    code. On any other exception (Ctrl-C, which the child gets from the terminal too) it has ``grace_s`` to finish
    saving before it is killed; then the exception goes on. ``output``: a file that its output goes to (default:
    this process's terminal)."""
    # a shell's background job inherits SIGINT ignored, and so would the child: give it the default back, so that
    # the interrupt saves the partial notebook instead of waiting out the grace
    pm = subprocess.Popen(command, stdin=stdin, env=env, stdout=output, stderr=output,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _RUNNING.add(pm)
    try:
        return pm.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if pm.poll() is not None:
            return pm.returncode
        pm.send_signal(signal.SIGINT)
        _wait_or_kill(pm, grace_s)
        raise
    except BaseException:
        _wait_or_kill(pm, grace_s)
        raise
    finally:
        _RUNNING.discard(pm)


def _wait_or_kill(process: subprocess.Popen, grace_s: float) -> None:
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def execute(nb_id: str, profile: str, out: Path, parameters: dict | None = None, env: dict | None = None,
            data_out: Path | None = None, timeout_s: float | None = None, progress_bar: bool = True,
            log: Path | None = None, at_once: int = 1) -> None:
    """notebooks/<id>.py -> (jupytext) -> papermill -> out, and ``<out>.run.json`` (``provenance.record``); fails if
    either step fails. ``out`` (and the chapter's numbers under ``data_out``) is replaced only when the run
    succeeds: a failed or interrupted run leaves the last good copy as it was, and its own partial notebook as
    ``<id>.failed.ipynb``. The ``<id>.profile`` marker that ``--reuse`` and ``--no-execute`` trust is written
    (atomically) after everything else of a run: never beside a notebook of another run.

    ``parameters`` override the notebook's (after the profile's file); ``env`` is added to the environment of
    the kernel (numerical modes, data folders); ``data_out``: where the chapter files its tables' and figures'
    numbers (``equinb.tables.save_data``, as ``<data_out>/<id>/``; none written without it). ``timeout_s``: stop
    a run that takes longer (``ChapterStopped``); ``progress_bar``: papermill's bar of cells. ``log``: a file for
    papermill's output instead of the terminal (chapters run at the same time), whose end a failure quotes;
    ``at_once``: how many chapters run at the same time, for the record.
    """
    source = ROOT / "notebooks" / f"{nb_id}.py"
    if not source.is_file():
        fail(f"_toc.yml lists notebooks/{nb_id} but {rel(source)} does not exist")
    check_parameter_names(nb_id, list(parameters or {}), "parameters")
    out.parent.mkdir(parents=True, exist_ok=True)
    running, failed = out.with_suffix(".running.ipynb"), out.with_suffix(".failed.ipynb")
    marker, run_record = profile_marker(out), out.with_suffix(".run.json")
    running_data = None if data_out is None else data_out / f".running-{nb_id}"
    if running_data is not None and running_data.exists():
        shutil.rmtree(running_data)  # left by an interrupted run
    to_ipynb = [*MODULE, "jupytext", "--quiet", "--to", "ipynb", "-o", "-", str(source)]
    # --language: a .py without a kernelspec gives papermill no language, which it needs to inject parameters.
    run_pm = [*MODULE, "papermill", "-", str(running), "-k", "python3", "--language", "python",
              "--cwd", str(ROOT / "notebooks"), "--progress-bar" if progress_bar else "--no-progress-bar"]
    params = params_file(nb_id, profile)
    if params is not None:
        run_pm += ["-f", str(params)]
    if parameters:
        run_pm += ["-y", yaml.safe_dump(parameters)]
    # the kernel's training runs report there (equinb.progress); absolute, as the kernel runs in notebooks/
    progress = out.with_suffix(".progress.log").resolve()
    progress.unlink(missing_ok=True)
    print(f"build_book: executing notebooks/{nb_id}.py -> {rel(out)}"
          + (f" with {rel(params)}" if params else "") + (f" and {parameters}" if parameters else "")
          + (f" under {env}" if env else "") + f"; its training runs: tail -f {rel(progress)}", flush=True)
    start, started = time.perf_counter(), time.time()
    jt = subprocess.Popen(to_ipynb, stdout=subprocess.PIPE)
    # papermill warns that "-" (stdin) has no extension; that is intended here.
    env = dict({k: v for k, v in os.environ.items() if k != RUN_PARAMETERS_ENV},
               PYTHONWARNINGS="ignore:the file is not specified with any extension", **(env or {}))
    env.pop(DATA_ENV, None)
    env[PROGRESS_ENV] = str(progress)
    # the kernel labels its tables with the parameters changed for this run (equinb.chapter.changed_parameters),
    # unless the caller says otherwise (tools/measure_noise.py: seed variants whose text must pair with the reference)
    env.setdefault(RUN_PARAMETERS_ENV, parameters_text(parameters))
    if running_data is not None:
        env[DATA_ENV] = str(running_data)
    succeeded = False
    try:
        try:
            with open(log, "w") if log is not None else contextlib.nullcontext() as output:
                returncode = _run_child(run_pm, jt.stdout, env, timeout_s, output=output)
        except subprocess.TimeoutExpired:
            returncode = None
        jt.stdout.close()
        kept = f"; {rel(out)} is the last good run, kept" if out.is_file() else ""
        partial = f"; the partly executed notebook is {rel(failed)}" if running.is_file() else ""
        where = f"(notebooks/{nb_id}, profile {profile})" + partial + kept
        if returncode != 0:
            where += _last_progress(progress)
        if log is not None and returncode != 0:
            where += f"; its output is {rel(log)}, which ends:\n" + _tail(log)
        if returncode is None:  # before jupytext's status: a papermill stopped early may leave its pipe unread
            jt.wait()
            raise ChapterStopped(f"ran past its {timeout_s:.0f} s and was stopped {where}")
        if jt.wait() != 0:
            raise ChapterFailed(f"jupytext could not convert {rel(source)}")
        if returncode != 0:
            raise ChapterFailed(f"{_papermill_failure(returncode, log is not None)} {where}")
        if nb_id in AGGREGATES:
            hide_injected_parameters(running)
        # Unmark the last good copy before replacing it; the marker (written last, below) then only ever sits
        # beside the run it names. Interrupted in between, the chapter has no marker: --reuse executes it again
        # and --no-execute refuses it, instead of trusting another run's profile or parameters.
        marker.unlink(missing_ok=True)
        run_record.unlink(missing_ok=True)
        running.replace(out)
        failed.unlink(missing_ok=True)
        if running_data is not None:  # this run's tables replace the last run's (none left from an older run)
            shutil.rmtree(data_out / nb_id, ignore_errors=True)
            if (running_data / nb_id).is_dir():
                (running_data / nb_id).replace(data_out / nb_id)
        succeeded = True
    finally:  # also on Ctrl-C: the partial run is set aside, its tables never reach the book
        if not succeeded and running.is_file():
            running.replace(failed)
        if running_data is not None:
            shutil.rmtree(running_data, ignore_errors=True)
    label = run_label(profile, parameters)
    seconds = time.perf_counter() - start
    device = str({**profile_values(nb_id, profile), **(parameters or {})}.get("device", "cpu"))
    threads = env.get("OMP_NUM_THREADS")
    provenance.write(run_record, provenance.record(nb_id, label, started, seconds, device,
                                                   None if threads is None else int(threads), at_once))
    atomic_write_text(marker, label + "\n")  # last: a marked chapter is complete, record and tables included
    print(f"build_book: notebooks/{nb_id} done in {seconds:.0f} s", flush=True)


def _last_progress(progress: Path) -> str:
    """Where a stopped or failed chapter's training had got: the last line of its progress log, if any."""
    lines = progress.read_text(errors="replace").splitlines() if progress.is_file() else []
    return f"; its last progress line: {lines[-1]}" if lines else ""


def _tail(log: Path, lines: int = 25) -> str:
    """The last lines of a chapter's log, indented (papermill's error is there)."""
    text = log.read_text(errors="replace").replace("\r", "\n") if log.is_file() else ""
    return "\n".join("    " + line for line in [ln for ln in text.splitlines() if ln.strip()][-lines:])


def hide_injected_parameters(executed: Path) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell``: an aggregate page's only injected parameter is the
    folder of this build's executed chapters, a path on the building machine that means nothing to a reader."""
    nb = json.loads(executed.read_text())
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell["metadata"]["tags"] = [*tags, "remove-cell"]
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def profile_marker(executed: Path) -> Path:
    """The file that records which profile produced an executed chapter (``<id>.profile`` next to it)."""
    return executed.with_suffix(".profile")


def executed_profile(nb_id: str) -> str | None:
    marker = profile_marker(EXECUTED / "notebooks" / f"{nb_id}.ipynb")
    return marker.read_text().strip() if marker.is_file() and marker.with_suffix(".ipynb").is_file() else None


def default_jobs(profile: str, cores: int | None = None, environ: dict | None = None) -> int:
    """How many chapters ``make book`` runs at the same time: two on the small profile where there are two cores or
    more, since a small model's operations use a second thread poorly (``bench/two_at_a_time.py``: two training
    runs at once on one thread each took 0.58 of the wall time of one after the other on two, on 2 cores); one on
    any other profile (one GPU), or where the environment already sets the kernels' threads (a numerical mode)."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    if profile != "small" or cores < 2 or any(k in environ for k in ("OMP_NUM_THREADS", "IPYTHONDIR")):
        return 1
    return 2


def run_chapters(ids: list[str], jobs: int, keep_going: bool,
                 run_one: Callable[[str, int, dict[str, str] | None], None]) -> list[str]:
    """Call ``run_one(nb_id, at_once, env)`` for each chapter, ``jobs`` at a time, in the order of ``ids``: the
    chapters that time code (``TIMED``) first and on their own, the pages computed from the chapters
    (``AGGREGATES``) after all of them. A chapter run beside others gets ``at_once`` > 1 and ``env``, the variables
    that put its kernel on its share of the cores; one run alone gets 1 and None (every core).
    ``run_one`` raises ``ChapterFailed`` for a failed chapter. With ``keep_going``, the rest run after a failure, a
    line names each failure as it happens, their messages come at the end, and the failed ids are returned;
    without, no chapter starts after one failed (one already running finishes) and the failure is raised. On an
    interrupt (which the child processes get from the terminal too), each child still running (``_RUNNING``) has
    30 s to finish saving before it is killed, and the interrupt goes on; no failure is reported for them."""
    failures: dict[str, str] = {}
    stopped = threading.Event()  # set by a failure without keep_going, or an interrupt: start no other chapter
    chapters = sharing_chapters(ids)
    jobs = chapters_at_once(ids, jobs)
    env = thread_env(threads_each(jobs)) if jobs > 1 else None

    def run(nb_id: str) -> None:
        if stopped.is_set():
            return
        together = nb_id in chapters and jobs > 1
        try:
            run_one(nb_id, jobs if together else 1, env if together else None)
        except BaseException as err:
            if not keep_going or not isinstance(err, ChapterFailed):
                stopped.set()  # before this worker takes the next chapter
                raise
            if stopped.is_set():  # interrupted: the child stopped because of it, not on its own
                return
            print(f"notebooks/{nb_id} failed (its report follows at the end); going on with the other chapters",
                  file=sys.stderr, flush=True)
            failures[nb_id] = str(err)

    for nb_id in ids:
        if nb_id in TIMED:
            run(nb_id)
    if jobs == 1:
        for nb_id in chapters:
            run(nb_id)
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            pending = [pool.submit(run, nb_id) for nb_id in chapters]
            try:
                for future in concurrent.futures.as_completed(pending):
                    future.result()
            except BaseException:  # a failure or an interrupt: start no other chapter
                stopped.set()
                if not isinstance(sys.exc_info()[1], ChapterFailed):  # interrupted: as one at a time would be
                    for child in list(_RUNNING):
                        _wait_or_kill(child, 30)
                raise
    for nb_id in ids:
        if nb_id in AGGREGATES:
            run(nb_id)
    for message in failures.values():
        print(f"error: {message}", file=sys.stderr, flush=True)
    return list(failures)


def sharing_chapters(ids: list[str]) -> list[str]:
    """The chapters of ``ids`` that may run beside others: not those that time code or read the others."""
    return [i for i in ids if i not in TIMED and i not in AGGREGATES]


def chapters_at_once(ids: list[str], jobs: int) -> int:
    """How many chapters ``run_chapters`` runs at the same time: ``jobs``, at most ``sharing_chapters``, at least 1."""
    return max(1, min(jobs, len(sharing_chapters(ids))))


def threads_each(at_once: int) -> int:
    """The threads of each kernel when ``at_once`` chapters share the cores."""
    return max(1, available_cores() // at_once)


def sharing_note(ids: list[str], jobs: int) -> str | None:
    """"2 chapters at a time, 1 thread(s) each" where ``run_chapters`` runs chapters together, else None."""
    at_once = chapters_at_once(ids, jobs)
    return f"{at_once} chapters at a time, {threads_each(at_once)} thread(s) each" if at_once > 1 else None


def execute_all(ids: list[str], profile: str, parameters: dict, keep_going: bool, jobs: int = 1) -> None:
    """Execute chapters with papermill, ``jobs`` at a time (``run_chapters``; a chapter run beside others writes
    its output to ``<id>.log``). With ``keep_going``, run the rest after a failure and fail at the end; without,
    start no chapter after one failed."""
    if note := sharing_note(ids, jobs):
        print(f"build_book: {note}; each one's output in {rel(EXECUTED)}/notebooks/<id>.log (--jobs 1: one at a "
              "time, on every core)", flush=True)

    def run(nb_id: str, at_once: int, env: dict[str, str] | None) -> None:
        out = EXECUTED / "notebooks" / f"{nb_id}.ipynb"
        # a page computed from the chapters reads the ones executed here (not the committed ones)
        execute(nb_id, profile, out, {"chapters_dir": str(out.parent), **parameters} if nb_id in AGGREGATES
                else parameters, data_out=EXECUTED / "data", env=env, progress_bar=at_once == 1,
                log=out.with_suffix(".log") if at_once > 1 else None, at_once=at_once)
        if parameters_text(parameters):  # a variant: kept where no build of the profile replaces it
            print(f"build_book: this run ({run_label(profile, parameters)}) is also kept as "
                  f"{rel(keep_variant(nb_id, parameters))}", flush=True)

    try:
        failures = run_chapters(ids, jobs, keep_going, run)
    except ChapterFailed as err:
        fail(str(err))
    if failures:
        fail(f"{len(failures)} chapter(s) failed: {', '.join(failures)}")


def stage(ids: list[str]) -> None:
    """_build/src = _config.yml + _toc.yml + book/ + executed notebooks (the repo's relative layout)."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    (STAGE / "notebooks").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, STAGE / name)
    shutil.copytree(ROOT / "book", STAGE / "book")
    for nb_id in ids:
        shutil.copy2(EXECUTED / "notebooks" / f"{nb_id}.ipynb", STAGE / "notebooks" / f"{nb_id}.ipynb")
    records = [json.loads(path.read_text()) for nb_id in ids
               if (path := EXECUTED / "notebooks" / f"{nb_id}.run.json").is_file()]
    (STAGE / "book" / "execution.md").write_text(provenance.execution_page(records))
    diagrams.write_all(STAGE / "book" / "_static" / "diagrams")  # the method primer's figures


def build_html() -> None:
    """Build the staged book; the last built HTML stays in place until the new one is complete."""
    if JB_OUT.exists():
        shutil.rmtree(JB_OUT)
    cmd = [str(BIN / "jupyter-book"), "build", str(STAGE), "--all", "-W", "--path-output", str(JB_OUT)]
    print("build_book: " + " ".join(rel(Path(c)) if c.startswith(str(ROOT)) else c
                                    for c in cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        fail("jupyter-book build failed (warnings are errors: see the messages above)")
    new = HTML.with_name(HTML.name + ".new")
    if new.exists():
        shutil.rmtree(new)
    shutil.copytree(JB_OUT / "_build" / "html", new)
    if (EXECUTED / "data").is_dir():  # the tables' and figures' numbers, linked from their captions
        shutil.copytree(EXECUTED / "data", new / "data", ignore=shutil.ignore_patterns(".running-*"))
    if HTML.exists():
        shutil.rmtree(HTML)
    new.replace(HTML)


def remove_unlisted(ids: list[str]) -> None:
    """Delete the executed copies and tables of chapters that ``_toc.yml`` no longer lists (they would otherwise
    reach the book's data folder); the listed chapters' copies are replaced one by one as each run succeeds."""
    for path in (EXECUTED / "notebooks").glob("*"):
        if path.name.split(".")[0] not in ids:
            path.unlink()
    for path in (EXECUTED / "data").glob("*"):
        if path.is_dir() and path.name not in ids and not path.name.startswith(".running-"):
            shutil.rmtree(path)


def main(argv: list[str] | None = None) -> None:
    # no abbreviations: take_parameters sees -p and --parameter only, and --param would bypass it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--profile", default="small", help=f"one of {', '.join(chapter.PROFILES)} (default small)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-execute", action="store_true",
                      help="reuse the notebooks already in _build/executed (same profile) and only rebuild HTML")
    mode.add_argument("--reuse", action="store_true",
                      help="execute only chapters without an executed copy of this profile, then build the HTML")
    mode.add_argument("--only", nargs="+", metavar="ID", help="execute only these chapters; no HTML")
    parser.add_argument("--keep-going", action="store_true", help="run the other chapters after one fails")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="chapters executed at the same time, each on its share of the cores (default: 2 on the "
                             "small profile with 2 cores or more, else 1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a chapter parameter (VALUE is YAML: 3, 0.1, -5e-8, '[a, b]', '{k: v}')")
    rest, pairs = take_parameters(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    args.parameter = pairs
    if args.profile not in chapter.PROFILES:
        fail(f"unknown PROFILE {args.profile!r}; valid profiles: {', '.join(chapter.PROFILES)}")
    if args.jobs is not None and args.jobs < 1:
        fail(f"--jobs must be 1 or more, got {args.jobs}")
    jobs = default_jobs(args.profile) if args.jobs is None else args.jobs
    parameters = {name: parameter_value(value) for name, value in args.parameter}
    toc_ids = notebook_ids()
    ids = toc_ids
    if args.only:
        unknown = [i for i in args.only if i not in toc_ids]
        if unknown:
            fail(f"unknown chapter {', '.join(map(repr, unknown))}; chapters: {', '.join(toc_ids)}")
        ids = args.only
    elif parameters:
        fail("-p applies to one chapter at a time: add --only <id> (or use make chapter ID=<id>)")
    if "profile" in parameters:
        fail(f"set the profile with PROFILE={parameters['profile']} (make) or --profile {parameters['profile']}, not "
             "-p profile: the profile also picks the parameters file notebooks/params/<id>.<profile>.yaml")
    print(f"build_book: profile {args.profile}; notebooks: {', '.join(ids) or '(none)'}", flush=True)
    for nb_id in ids:  # check every source, parameter file and parameter name before running anything
        if not (ROOT / "notebooks" / f"{nb_id}.py").is_file():
            fail(f"_toc.yml lists notebooks/{nb_id} but notebooks/{nb_id}.py does not exist")
        params_file(nb_id, args.profile)
        check_parameter_names(nb_id, list(parameters), "-p")
    parameters = without_own_values(ids, args.profile, parameters)

    start = time.perf_counter()
    if args.only:
        execute_all(ids, args.profile, parameters, args.keep_going, jobs)
        print(f"build_book: executed {', '.join(ids)} ({args.profile}) into {rel(EXECUTED)}/notebooks in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        if parameters_text(parameters):
            print(f"build_book: open {rel(VARIANTS)}/<id>.<parameters>.ipynb in Jupyter. The book shows each "
                  "profile's own runs: `make book REUSE=1` runs these chapters again with their defaults", flush=True)
        else:
            print("build_book: `make book REUSE=1` builds the HTML with them", flush=True)
        return
    if args.no_execute:
        wrong = {i: executed_profile(i) for i in ids
                 if executed_profile(i) != args.profile and i not in AGGREGATES}
        if wrong:
            fail(f"--no-execute: no executed copy of profile {args.profile!r} for "
                 + ", ".join(f"{i} (found {p!r})" for i, p in wrong.items()) + "; run without it")
        execute_all([i for i in ids if i in AGGREGATES], args.profile, {}, args.keep_going)
    elif args.reuse:
        missing = [i for i in ids if executed_profile(i) != args.profile or i in AGGREGATES]
        print(f"build_book: reusing {len(ids) - len(missing)} executed chapter(s); executing "
              f"{', '.join(missing) or 'none'}", flush=True)
        execute_all(missing, args.profile, {}, args.keep_going, jobs)
    else:  # every chapter again; each keeps its last good copy until its new run succeeds
        execute_all(ids, args.profile, {}, args.keep_going, jobs)
    remove_unlisted(ids)
    stage(ids)
    build_html()
    print(f"build_book: profile {args.profile}: {rel(HTML)}/index.html built in "
          f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # one line, not two tracebacks: nothing of value is lost on an interrupt
        print("\nbuild_book: interrupted; the chapters finished so far and every cached training run are kept; "
              "`make book REUSE=1` goes on from them (`make chapter` reruns one chapter)", file=sys.stderr)
        sys.exit(130)
