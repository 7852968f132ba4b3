"""Wall time of `python train.py ...` in two (or more) checkouts, one fresh process per run: the
ratio of each side to the first, per round, and its median.

    git worktree add /tmp/old 519cb84
    python benchmarks/ab_train.py --side old=/tmp/old --side new=. --rounds 3 \\
        -- --set stage1.max_steps=200 --set stage2.max_steps=40
    python benchmarks/ab_train.py --side old=/tmp/old --side new=. --rounds 1 --   # the whole default run
    python benchmarks/ab_train.py --side old=/tmp/old --side new=. --rounds 2 --concurrent --

A side is NAME=DIR[@ARGS]: train.py in DIR (its own data caches under DIR/.cache), with the
common arguments after `--` plus ARGS (e.g. `new_compiled=.@--set compile=true`). Before timing,
each side runs once with 2 + 1 steps and no evaluation (data caches, inductor's compile cache).

Two ways to share the machine:
- default: one run at a time with the machine's threads, the order alternating every round (A B,
  B A, ...), so drifting load hits the sides alike;
- --concurrent: all sides at once, each on a core of its own with one thread (OMP_NUM_THREADS=1,
  CPU affinity), the cores rotating every round. Whatever else slows the machine down during a
  round slows every side alike, so on a noisy machine the ratios are far tighter. A side that
  finishes first starts again, untimed, until the round's last side is done: no timed run has the
  machine (its memory bandwidth, its shared cache) to itself.

Besides the wall time, each side's optimizer steps are paired with the first side's same steps
(stage, step; same seed, so the same batches) from log.jsonl's tokens_per_s: the time of all
paired steps over the first side's, per round (the training loop alone, without start-up,
validation and evaluation), and the median of the per-step ratios over all rounds (the typical
step: a slow stretch of a few seconds hardly moves it, nor does a cost paid only on some steps).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time


def start(directory, args, out, core=None):
    """A train.py process into a new folder `out` (train.py refuses a used one); with core, pinned
    to that core with one thread."""
    env, pin = os.environ, None
    if core is not None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731
    return subprocess.Popen([sys.executable, "train.py", "--out", out, *args], cwd=directory, env=env,
                            preexec_fn=pin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(procs):
    """Waits for procs {key: (Popen, directory, args, out, start time, core)}; returns {key: (wall
    time, seconds per target token at each optimizer step {(stage, step): 1 / tokens_per_s})}.
    A pinned process (core set) that ends while others still run is started again on its core
    into a scratch folder, untimed, so that no timed run ever has the machine to itself."""
    walls, fillers = {}, []
    try:
        while len(walls) < len(procs):
            for key, (proc, directory, args, out, t0, core) in procs.items():
                if key not in walls and proc.poll() is not None:
                    walls[key] = time.perf_counter() - t0
                    if proc.returncode == 0 and core is not None and len(walls) < len(procs):
                        fillers.append(start(directory, args, f"{out}-filler{len(fillers)}", core))
            time.sleep(0.02)
    finally:
        for filler in fillers:
            filler.kill()
            filler.wait()
    done = {}
    for key, (proc, directory, args, out, *_) in procs.items():
        if proc.returncode:
            for other, *_ in procs.values():
                other.kill()
            sys.exit(f"train.py in {directory} {' '.join(args)} failed:\n{proc.stderr.read()[-2000:]}")
        with open(os.path.join(out, "log.jsonl")) as f:
            records = [json.loads(line) for line in f]
        done[key] = walls[key], {(r["stage"], r["step"]): 1 / r["tokens_per_s"]
                                 for r in records if r.get("type") == "train"}
    return done


def run_all(group, concurrent, rnd):
    """group: [(name, directory, args, out)] run one after the other, or at once on rotating cores."""
    cores = sorted(os.sched_getaffinity(0))
    procs, done = {}, {}
    for k, (name, directory, args, out) in enumerate(group):
        core = cores[(k + rnd) % len(cores)] if concurrent else None
        procs[name] = (start(directory, args, out, core), directory, args, out, time.perf_counter(), core)
        if not concurrent:
            done.update(finish({name: procs.pop(name)}))
    done.update(finish(procs))
    return done


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", action="append", required=True, help="NAME=DIR[@ARGS]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrent", action="store_true", help="all sides at once, a core and one thread each")
    p.add_argument("common", nargs="*", help="train.py arguments for every side (after --)")
    args = p.parse_args()
    sides = []
    for spec in args.side:
        name, eq, rest = spec.partition("=")
        directory, _, extra = rest.partition("@")
        if not (name and eq and os.path.isfile(os.path.join(directory, "train.py"))):
            p.error(f"--side {spec!r}: need NAME=DIR[@ARGS] with DIR holding train.py")
        sides.append((name, os.path.abspath(directory), args.common + shlex.split(extra)))
    if args.concurrent and len(sides) > len(os.sched_getaffinity(0)):
        p.error(f"--concurrent: {len(sides)} sides but {len(os.sched_getaffinity(0))} cores")
    times = {name: [] for name, _, _ in sides}
    steps = {name: [] for name, _, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        run_all([(name, directory, side_args + ["--set", "stage1.max_steps=2", "--set", "stage2.max_steps=1",
                                                "--set", "eval=false"], os.path.join(tmp, f"warm-{name}"))
                 for name, directory, side_args in sides], False, 0)
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            done = run_all([(name, directory, side_args, os.path.join(tmp, f"{name}-{r}"))
                            for name, directory, side_args in order], args.concurrent, r)
            for name, _, _ in order:
                times[name].append(done[name][0])
                steps[name].append(done[name][1])
                print(f"round {r} {name}: {done[name][0]:.1f} s, load avg "
                      f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    first = sides[0][0]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from training.machine import header
    print("\n" + header() + " (commit: this script's checkout)")
    how = "at once, a core and one thread each" if args.concurrent else "one at a time"
    print(f"\ntrain.py {' '.join(args.common)}; {args.rounds} round(s), {how}; medians\n")
    print(f"| side | args | wall s | / {first} (median, min-max) | steps paired | all steps / {first} "
          f"(median, min-max) | step / {first} (median) |\n|---|---|---|---|---|---|---|")
    for name, directory, side_args in sides:
        ratios = [b / a for a, b in zip(times[first], times[name])]
        pairs = [[(a[key], b[key]) for key in a.keys() & b.keys()] for a, b in zip(steps[first], steps[name])]
        totals = [sum(b for _, b in p) / sum(a for a, _ in p) for p in pairs if p]
        per_step = [b / a for p in pairs for a, b in p]
        print(f"| {name} | {' '.join(side_args[len(args.common):]) or '-'} | "
              f"{statistics.median(times[name]):.1f} | {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}) | {len(per_step)} | "
              + (f"{statistics.median(totals):.3f}x ({min(totals):.3f}-{max(totals):.3f}) | "
                 f"{statistics.median(per_step):.3f}x |" if per_step else "- | - |"))


if __name__ == "__main__":
    main()
