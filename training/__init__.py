"""What train.py calls but a researcher changing the method does not need to read: config files
and --set overrides (config_io), every field's check and what a resume may change (config_check),
the JSONL step log and its throughput numbers (step_log),
processes, devices and model wrapping for DDP / FSDP2 (distributed), checkpoints and resume
(checkpoint)."""


class TrainError(RuntimeError):
    """A problem with the run itself (config, data, numerics): printed without a traceback."""
