"""Curve viewers beside the step log: TensorBoard and Weights & Biases (config `log`).

    python train.py --set log=["tensorboard"]          # RUN/tensorboard; tensorboard --logdir RUN
    python train.py --set log=["wandb"]                # project $WANDB_PROJECT (default sftkey)

log.jsonl stays the record (resume, eval.plot and the tests read it); a viewer gets the same
numbers, tagged `stage{n}/{train|val}/{name}` with the stage's own step. Each package is imported
only when its name is in `log`; a name whose package is missing stops the run at start with the
pip command. W&B follows its own environment (WANDB_MODE=offline, WANDB_API_KEY, ...); a resumed
run continues the same W&B run (its id is kept in RUN/wandb_run_id).
"""
import importlib.util
import json
import os
from pathlib import Path

VIEWERS = ("tensorboard", "wandb")


class LoggerError(RuntimeError):
    """A viewer that cannot start: names what to install."""


def missing(name):
    return LoggerError(f"log = ['{name}'] needs the {name} package: pip install {name}")


def check_installed(names):
    """LoggerError for a named viewer whose package (of the same name) is not installed, found
    without importing it: train.py calls this before it writes or deletes anything."""
    for name in dict.fromkeys(names):
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules as None: blocked
            found = False
        if not found:
            raise missing(name)


def scalars(record):
    """(tag, value) of every number in a step-log record."""
    prefix = f"stage{record['stage']}/{record.get('type', 'train')}"
    for key, value in record.items():
        if key not in ("stage", "step", "type") and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}/{key}", value


def tensorboard_viewer(run_dir, config):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise missing("tensorboard") from None
    writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))
    writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))

    def write(record):
        for tag, value in scalars(record):
            writer.add_scalar(tag, value, record["step"])
        writer.flush()

    return write, writer.close


def wandb_viewer(run_dir, config):
    try:
        import wandb
    except ImportError:
        raise missing("wandb") from None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    id_file = Path(run_dir) / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id + "\n")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sftkey"), name=os.path.basename(os.path.abspath(run_dir)),
                     id=run_id, resume="allow", dir=run_dir, config=config)
    for stage in (1, 2):  # each stage's curves against its own step counter
        run.define_metric(f"stage{stage}/step")
        run.define_metric(f"stage{stage}/*", step_metric=f"stage{stage}/step")

    def write(record):
        run.log({f"stage{record['stage']}/step": record["step"], **dict(scalars(record))})

    return write, run.finish


def open_viewers(names, run_dir, config):
    """[(write(record), close())] for the viewers named (in order); unknown names are an error."""
    unknown = [n for n in names if n not in VIEWERS]
    if unknown:
        raise LoggerError(f"log = {list(names)}: unknown {unknown}; use any of {list(VIEWERS)}")
    makers = {"tensorboard": tensorboard_viewer, "wandb": wandb_viewer}
    return [makers[name](run_dir, config) for name in dict.fromkeys(names)]


class ViewedLog:
    """A step log (JsonlLog: write, truncate, records) whose writes also go to the viewers."""

    def __init__(self, log, viewers):
        self.log, self.viewers = log, viewers

    def write(self, record):
        self.log.write(record)
        for write, _ in self.viewers:
            write(record)

    def truncate(self, stage, step):
        self.log.truncate(stage, step)

    def records(self):
        return self.log.records()

    def close(self):
        for _, close in self.viewers:
            close()
