"""The ablation the paper should have had: every arm of design.md, several seeds, intervals.

    python -m eval.ablation --config configs/demo.toml --seeds 3 --out runs/ablation

Arms (role weights PROMPT, COT, KEY):
  sft           plain response,  stage 1 (0, 1, 1)
  sft_tag       tagged response, stage 1 (0, 1, 1)         = stage 1 of sftkey_tag (same seed)
  key_tag       tagged response, stage 1 (0, 0, 1)         Key-only loss from the start
  sftkey_tag    tagged response, stage 1 (0, 1, 1) then stage 2 (0, 0, 1): the method
  sft_tag_equal tagged response, stage 1 (0, 1, 1) for as many steps as sftkey_tag's two stages
  weighted      tagged response, stage 1 (0, 1, key_weight): single-stage token weighting
sft_tag is not trained separately: with the same seed it is exactly sftkey_tag's stage 1.
Finished runs are found in --out and not retrained, and unfinished ones are resumed, but only
when the config they were started with equals the one this command gives the arm; a run directory
of any other config (another config file, --set, or a changed default) stops the ablation with the
differing fields named, rather than mixing old results into the table.
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

from eval.metrics import mean_ci, paired_difference

ARMS = ("sft", "sft_tag", "key_tag", "sftkey_tag", "sft_tag_equal", "weighted")
METRICS = ("acc", "fmt", "score")


def arm_overrides(arm, key_weight):
    tagged = ["--set", "style=tagged", "--stage", "1"]
    return {
        "sft": ["--set", "style=plain", "--stage", "1", "--set", "stage1.weights=[0,1,1]"],
        "key_tag": tagged + ["--set", "stage1.weights=[0,0,1]"],
        "sftkey_tag": ["--set", "style=tagged", "--stage", "both",
                       "--set", "stage1.weights=[0,1,1]", "--set", "stage2.weights=[0,0,1]"],
        "sft_tag_equal": tagged + ["--set", "stage1.weights=[0,1,1]"],
        "weighted": tagged + ["--set", f"stage1.weights=[0,1,{key_weight}]"],
    }[arm]


def steps_per_stage(run_dir):
    steps = {}
    path = Path(run_dir) / "log.jsonl"
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise AblationError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if r["type"] == "train":
            steps[r["stage"]] = max(steps.get(r["stage"], 0), r["step"])
    return steps


class AblationError(Exception):
    pass


# settings that may differ between a saved run and this command without changing its results
RUN_ONLY_FIELDS = ("out", "resume", "parallel")


def check_same_config(out, argv):
    """Raises AblationError when the run in `out` was started with another config than `argv` gives."""
    import train
    try:
        saved = json.loads((out / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise AblationError(f"{out / 'config.json'}: not valid JSON ({e}); move the run away") from None
    wanted = json.loads(json.dumps(dataclasses.asdict(train.parse_args(argv))))

    def differences(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            if not prefix and key in RUN_ONLY_FIELDS:
                continue
            x, y = a.get(key, "<missing>"), b.get(key, "<missing>")
            if isinstance(x, dict) and isinstance(y, dict):
                yield from differences(x, y, f"{prefix}{key}.")
            elif x != y:
                yield f"{prefix}{key}: {x!r} there, {y!r} now"
    diff = list(differences(saved, wanted))
    if diff:
        raise AblationError(f"{out} holds a run of another config ({'; '.join(diff[:6])}"
                            f"{'; ...' if len(diff) > 6 else ''}): move it away or choose another --out")


def run_arm(arm, seed, args, extra):
    """Trains one arm for one seed unless its results exist; returns {stage: metrics}."""
    import train
    out = Path(args.out) / arm / f"seed{seed}"
    # the arm's own settings come after the user's overrides so that they win
    argv = ["--config", args.config, "--out", str(out), "--seed", str(seed)] + extra + arm_overrides(arm, args.key_weight)
    if arm == "sft_tag_equal":
        steps = steps_per_stage(Path(args.out) / "sftkey_tag" / f"seed{seed}")
        argv += ["--set", f"stage1.max_steps={steps[1] + steps[2]}"]
    resume = out.joinpath("config.json").exists()
    if resume:
        check_same_config(out, argv)
    final_stage = "stage2" if arm == "sftkey_tag" else "stage1"
    results_path = out / "results.json"
    if results_path.exists() and final_stage in json.loads(results_path.read_text()):
        return json.loads(results_path.read_text())
    print(f"== {arm} seed {seed}" + (" (resuming)" if resume else ""), flush=True)
    results = train.main(argv + (["--resume"] if resume else []))
    if final_stage not in results:
        raise AblationError(f"{out}: the run finished without evaluating {final_stage} (no eval records?)")
    return results


def check_evaluates(args, extra):
    """The table needs every arm evaluated: refuse a config that would train without evaluating."""
    import train
    cfg = train.parse_args(["--config", args.config, "--out", str(Path(args.out) / "check")] + extra)
    if not cfg.eval:
        raise AblationError(f"{args.config}{' with ' + ' '.join(args.set) if args.set else ''}: eval = "
                            "false, but the ablation compares the arms' evaluations; drop eval=false")
    if cfg.data_format != "synthetic" and not cfg.eval_data:
        raise AblationError(f"{args.config}: eval_data is empty, but the ablation compares the arms' "
                            "evaluations; set eval_data")


def collect(args, extra):
    runs = []
    for seed in range(args.seed0, args.seed0 + args.seeds):
        sftkey = run_arm("sftkey_tag", seed, args, extra)
        for arm in args.arms:
            if arm == "sftkey_tag":
                metrics = sftkey["stage2"]
            elif arm == "sft_tag":
                metrics = sftkey["stage1"]
            else:
                metrics = run_arm(arm, seed, args, extra)["stage1"]
            runs.append({"arm": arm, "seed": seed, **{k: metrics[k] for k in METRICS}, "n": metrics["n"]})
    return runs


def table(runs, arms):
    by_arm = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms}
    seeds = len(by_arm[arms[0]])
    lines = [f"Mean and 95% t-interval over {seeds} seeds (n = {runs[0]['n']} test questions per run).", "",
             "| arm | " + " | ".join(m.capitalize() for m in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for arm in arms:
        cells = [fmt_ci(mean_ci([r[m] for r in by_arm[arm]])) for m in METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if "sftkey_tag" in by_arm:
        lines += ["", "Paired difference, sftkey_tag minus each arm (same seed), mean and 95% t-interval.", "",
                  "| sftkey_tag minus | " + " | ".join(f"d{m.capitalize()}" for m in METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for arm in arms:
            if arm == "sftkey_tag":
                continue
            cells = [fmt_ci(paired_difference([r[m] for r in by_arm["sftkey_tag"]], [r[m] for r in by_arm[arm]]),
                            signed=True) for m in METRICS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_ci(ci, signed=False):
    sign = "+" if signed else ""
    return f"{ci['mean']:{sign}.3f} [{ci['lo']:{sign}.3f}, {ci['hi']:{sign}.3f}]"


def plot(runs, arms, args):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_acc, ax_nll) = plt.subplots(1, 2, figsize=(12, 4.5))
    means = [mean_ci([r["acc"] for r in runs if r["arm"] == arm]) for arm in arms]
    ax_acc.bar(arms, [m["mean"] for m in means], yerr=[[m["half_width"] for m in means]] * 2,
               capsize=4, color="tab:blue")
    ax_acc.set_ylabel("accuracy (95% CI)")
    ax_acc.tick_params(axis="x", rotation=30)
    for seed in range(args.seed0, args.seed0 + args.seeds):
        log = Path(args.out) / "sftkey_tag" / f"seed{seed}" / "log.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        val = [r for r in records if r["type"] == "val"]
        offset = max((r["step"] for r in records if r["stage"] == 1), default=0)
        x = [r["step"] + (offset if r["stage"] == 2 else 0) for r in val]
        label = seed == args.seed0
        ax_nll.plot(x, [r.get("val_cot_nll") for r in val], color="tab:orange", label="CoT NLL" if label else None)
        ax_nll.plot(x, [r.get("val_key_nll") for r in val], color="tab:green", label="Key NLL" if label else None)
        ax_nll.axvline(offset, color="gray", linestyle=":")
    ax_nll.set_xlabel("optimizer step (stage 1 | stage 2)")
    ax_nll.set_ylabel("validation NLL per token")
    ax_nll.set_yscale("log")
    ax_nll.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out) / "ablation.png", dpi=120)
    print(f"plot: {Path(args.out) / 'ablation.png'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed0", type=int, default=0, help="first seed")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    p.add_argument("--key-weight", type=float, default=5.0, help="KEY weight of the weighted arm")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every run")
    args = p.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if args.seeds < 2:
        p.error("--seeds must be at least 2 for a confidence interval")
    extra = [x for s in args.set for x in ("--set", s)]
    check_evaluates(args, extra)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs = collect(args, extra)
    text = table(runs, args.arms)
    (Path(args.out) / "runs.json").write_text(json.dumps(runs, indent=1))
    (Path(args.out) / "table.md").write_text(text + "\n")
    print(text)
    plot(runs, args.arms, args)
    return runs


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the table so far is on disk; rerunning resumes
        # config, data and checkpoint errors are ValueErrors; OSError: disk full, read-only
        if isinstance(e, (AblationError, ValueError, OSError)) or type(e).__name__ == "TrainError":
            sys.exit(f"eval.ablation: {e}")
        raise
