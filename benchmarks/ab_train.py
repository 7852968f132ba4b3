"""Wall time of `python train.py ...` in two (or more) checkouts, alternating, one fresh process
per run: the ratio of each side to the first, per round, and its median.

    git worktree add /tmp/old 519cb84
    python benchmarks/ab_train.py --side old=/tmp/old --side new=. --rounds 3 \\
        -- --set stage1.max_steps=200 --set stage2.max_steps=40
    python benchmarks/ab_train.py --side old=/tmp/old --side new=. --rounds 1 --   # the whole default run

A side is NAME=DIR[@ARGS]: train.py in DIR (its own data caches under DIR/.cache), with the
common arguments after `--` plus ARGS (e.g. `new_compiled=.@--set compile=true`). Before timing,
each side runs once with 2 + 1 steps and no evaluation (data caches, inductor's compile cache).
Rounds alternate the order (A B, B A, ...), so drifting load hits the sides alike.
"""
import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time


def run(directory, args, out):
    """Wall time of one train.py process into a new folder `out` (train.py refuses a used one)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", "--out", out, *args], cwd=directory,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"train.py in {directory} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", action="append", required=True, help="NAME=DIR[@ARGS]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("common", nargs="*", help="train.py arguments for every side (after --)")
    args = p.parse_args()
    sides = []
    for spec in args.side:
        name, eq, rest = spec.partition("=")
        directory, _, extra = rest.partition("@")
        if not (name and eq and os.path.isfile(os.path.join(directory, "train.py"))):
            p.error(f"--side {spec!r}: need NAME=DIR[@ARGS] with DIR holding train.py")
        sides.append((name, os.path.abspath(directory), args.common + shlex.split(extra)))
    times = {name: [] for name, _, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for name, directory, side_args in sides:
            run(directory, side_args + ["--set", "stage1.max_steps=2", "--set", "stage2.max_steps=1",
                                        "--set", "eval=false"], os.path.join(tmp, f"warm-{name}"))
        for r in range(args.rounds):
            for name, directory, side_args in sides if r % 2 == 0 else sides[::-1]:
                t = run(directory, side_args, os.path.join(tmp, f"{name}-{r}"))
                times[name].append(t)
                print(f"round {r} {name}: {t:.1f} s, load avg {'/'.join(f'{x:.1f}' for x in os.getloadavg())}",
                      flush=True)
    first = sides[0][0]
    print(f"\ntrain.py {' '.join(args.common)}; {args.rounds} round(s), medians\n")
    print(f"| side | args | wall s | / {first} (median, min-max) |\n|---|---|---|---|")
    for name, directory, side_args in sides:
        ratios = [b / a for a, b in zip(times[first], times[name])]
        print(f"| {name} | {' '.join(side_args[len(args.common):]) or '-'} | "
              f"{statistics.median(times[name]):.1f} | {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}) |")


if __name__ == "__main__":
    main()
