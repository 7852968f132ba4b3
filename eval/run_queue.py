"""Training runs for eval.ablation: skipped when finished, resumed when unfinished, refused when a run
directory holds another config; executed one after another in this process, or several at a time
as `python train.py` subprocesses (--jobs), each as soon as the runs it depends on have finished."""
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from atomic_io import read_json

TRAIN_PY = Path(__file__).resolve().parent.parent / "train.py"


class AblationError(Exception):
    pass


@dataclass
class Run:
    directory: Path
    argv: list          # train.py arguments without --out
    stage: int          # the stage whose evaluation the run is for
    label: str


@dataclass
class Job:
    make: Callable      # {finished key: directory} -> Run, called once the dependencies are done
    deps: tuple = ()


def check_same_config(out, argv):
    """Raises AblationError when the run in `out` was started with another config than `argv` gives."""
    import train
    from training.config_check import differences
    saved = read_json(out / "config.json")
    wanted = json.loads(json.dumps(dataclasses.asdict(train.parse_args(argv))))
    diff = list(differences(saved, wanted))
    if diff:
        raise AblationError(f"{out} holds a run of another config ({'; '.join(diff[:6])}"
                            f"{'; ...' if len(diff) > 6 else ''}): move it away or choose another --out")


def todo(run):
    """train.py's full argv for a run still to do (with --resume when it was started), else None."""
    out = Path(run.directory)
    argv = ["--out", str(out)] + run.argv
    started = out.joinpath("config.json").exists()
    if started:
        check_same_config(out, argv)
    results = out / "results.json"
    if results.exists() and f"stage{run.stage}" in read_json(results):
        return None
    return argv + (["--resume"] if started else [])


def subprocess_env(parallel):
    """The environment of each train.py subprocess: the CPU cores split between the parallel runs
    (OpenMP threads of runs sharing a core wait on each other), unless OMP_NUM_THREADS is set."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def execute(jobs, parallel=1, poll_s=0.2):
    """Runs every job after its dependencies; returns {key: run directory}. jobs: {key: Job}, in the
    order to start them. parallel 1: train.main in this process; more: that many train.py
    subprocesses at a time, each writing its output to <run directory>/train.out."""
    import train
    done, running, pending = {}, {}, list(jobs)
    while pending or running:
        ready = [key for key in pending if all(d in done for d in jobs[key].deps)]
        for key in ready:
            if len(running) >= parallel:
                break
            pending.remove(key)
            run = jobs[key].make(done)
            argv = todo(run)
            if argv is None:
                done[key] = Path(run.directory)
                continue
            print(f"== {run.label}" + (" (resuming)" if "--resume" in argv else ""), flush=True)
            if parallel == 1:
                train.main(argv)
                done[key] = Path(run.directory)
                continue
            Path(run.directory).mkdir(parents=True, exist_ok=True)
            output = open(Path(run.directory) / "train.out", "w")
            process = subprocess.Popen([sys.executable, str(TRAIN_PY)] + argv, stdout=output,
                                       stderr=subprocess.STDOUT, env=subprocess_env(parallel))
            running[key] = (process, output, run)
        if not running:
            if pending and not ready:
                raise AblationError(f"runs {pending} wait on runs that never come")
            continue
        finished = [key for key, (process, _, _) in running.items() if process.poll() is not None]
        if not finished:
            time.sleep(poll_s)
        for key in finished:
            process, output, run = running.pop(key)
            output.close()
            if process.returncode != 0:
                for other, _, _ in running.values():
                    other.terminate()
                lines = (Path(run.directory) / "train.out").read_text().splitlines()[-15:]
                raise AblationError(f"{run.label}: train.py exited with {process.returncode} "
                                    f"({Path(run.directory) / 'train.out'}):\n" + "\n".join(lines))
            done[key] = Path(run.directory)
    return done
