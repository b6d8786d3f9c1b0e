"""Two small-profile training runs one after the other on every core, against both at once on half the cores each.

`make book` runs two chapters at a time on the small profile (`tools/build_book.py --jobs`): a small model's
operations (a λ network on 32 images x 4 views, MobileNetV2's last block) use a second thread poorly, so two
kernels on one thread each get more done than one kernel on two. This measures that on the chapters' own kind of
work: two training runs (`equinb.setups.run_training`, MobileNetV2 at 64 px on digits, rot90, the updated code,
seeds 0 and 1), each in a fresh process, first one after the other with all the cores, then both at the same time
with half of them each. The frozen pass that fills the feature cache runs once before, untimed.

    .venv/bin/python bench/two_at_a_time.py     # last line: wall_ratio=<x> (at once / one after the other; < 1)

The two sides' top-1 may differ in the last digits: one thread sums in another order than two.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from numerical_modes import available_cores  # noqa: E402


def worker(seed: int, threads: int, cache: str, rounds: int, steps: int) -> None:
    """One training run in this process on ``threads`` threads; prints its top-1 after finetuning."""
    import torch

    torch.set_num_threads(threads)
    from equinb.engine import TrainConfig
    from equinb.groups import get_group
    from equinb.setups import run_training, small_lambda_setup

    setup = small_lambda_setup(get_group("rot90"), cache_dir=cache)
    config = TrainConfig.updated(prefinetune_rounds=rounds, prefinetune_steps=steps, finetune_rounds=1,
                                 finetune_steps=steps, seed=seed)
    run = run_training(setup, config, cache_dir=None)
    print(f"seed {seed}, {threads} thread(s): top-1 {run.row['finetune_top1']:.2f}%", flush=True)


def launch(seed: int, threads: int, cache: str, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, __file__, "--worker", str(seed), str(threads), cache,
                             "--rounds", str(args.rounds), "--steps", str(args.steps)], env=env)


def timed(processes_in_turn: list[list]) -> float:
    """Wall seconds to run each group of (seed, threads) at once, the groups one after the other."""
    start = time.perf_counter()
    for group in processes_in_turn:
        started = [launch(*spec) for spec in group]
        if any(p.wait() != 0 for p in started):
            raise SystemExit("a training run failed; see its message above")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="prefinetune rounds per run")
    parser.add_argument("--steps", type=int, default=100, help="steps per round (the finetune round too)")
    parser.add_argument("--worker", nargs=3, metavar=("SEED", "THREADS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        seed, threads, cache = args.worker
        worker(int(seed), int(threads), cache, args.rounds, args.steps)
        return
    cores = available_cores()
    if cores < 2:
        raise SystemExit("this machine has one core: there is nothing to share")
    half = cores // 2
    with tempfile.TemporaryDirectory() as cache:
        print(f"machine: {cores} cores; two runs of {args.rounds} prefinetune rounds and one finetune round of up "
              f"to {args.steps} steps each", flush=True)
        subprocess.run([sys.executable, "-c", "from equinb.groups import get_group; from equinb.setups import "
                        f"small_lambda_setup; small_lambda_setup(get_group('rot90'), cache_dir={cache!r})"],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
        in_turn = timed([[(0, cores, cache, args)], [(1, cores, cache, args)]])
        print(f"one after the other, {cores} threads each: {in_turn:.1f} s", flush=True)
        together = timed([[(0, half, cache, args), (1, half, cache, args)]])
        print(f"both at once, {half} thread(s) each: {together:.1f} s", flush=True)
    print(f"wall_ratio={together / in_turn:.2f}")


if __name__ == "__main__":
    main()
