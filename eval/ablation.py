"""The ablation the paper should have had: every arm, tuned alike, several seeds, per-question tests.

    python -m eval.ablation --config configs/demo.toml --tune --seeds 5 --out runs/ablation
    python -m eval.ablation --config configs/demo.toml --seeds 3 --out runs/ablation   # config values

Arms (role weights PROMPT, COT, KEY):
  sft               plain response,  stage 1 (0, 1, 1)
  sft_tag           tagged response, stage 1 (0, 1, 1)
  key_tag           tagged response, stage 1 (0, 0, 1): Key-only loss from the start
  sftkey_tag        sft_tag's weights, then stage 2 (0, 0, 1): the method
  sft_tag_continue  sft_tag's weights, then stage 2 (0, 1, 1) with sftkey_tag's steps, warmup and
                    schedule: the continuation control (more steps at a second lr, loss unchanged)
  sft_tag_equal     tagged response, stage 1 (0, 1, 1) for as many steps as both stages together
  weighted          tagged response, stage 1 (0, 1, key weight): single-stage token weighting
  dft               tagged response, stage 1 (0, 1, 1) with DFT (loss x detached probability)
sft_tag is trained once per seed and is the stage 1 that sftkey_tag and sft_tag_continue start
from (run with --stage 2 --init from its checkpoint, so the two second stages share it exactly).

--tune chooses, on a validation split of the training distribution (synthetic.n_val >= 200
problems, or --val-data), the hyper-parameter each arm adds, from the same number of grid values
(the config's value times each of --grid-factors), by validation accuracy (ties: validation
Score, then the value nearest the config's, then the smaller), with one seed (--tune-seed) that
is not among the final seeds; the test split is not read while choosing:
  stage1.lr   the tagged stage 1 (sft_tag), shared by sftkey_tag, sft_tag_continue,
              sft_tag_equal and weighted;
  stage2.lr   sftkey_tag and sft_tag_continue, each from the same grid, from the chosen stage 1;
  key weight  weighted (the config's value: --key-weight), at the chosen stage-1 lr;
  lr          sft, key_tag and dft, each its own, from the stage-1 lr grid. Plain SFT is tuned
              like the other single-stage arms rather than sharing sft_tag's choice: its
              responses differ, and a value chosen on another arm's validation accuracy would
              handicap the baseline.
sft_tag_equal adds no hyper-parameter: it runs the tagged stage 1 at the chosen lr for longer.
The grid, every value's validation scores and the choices go to <out>/tuning.json; then every
arm trains with --seeds fresh seeds at the chosen values and is evaluated on the test split.
Without --tune every arm uses the config's values (and --key-weight).

--jobs N trains up to N runs at a time as train.py subprocesses (each as soon as the runs it
starts from have finished); the default, 1, trains them one after another in this process.

Outputs in --out: table.md (per arm, per pair with sftkey_tag), summary.json (per arm and seed
the hyper-parameters, Acc, Fmt, Score and per-kind Acc; the intervals and tests; the tuning),
runs.json, tuning.json, ablation.png (with matplotlib). Finished runs are found in --out and not
retrained, and unfinished ones are resumed, but only when the config they were started with
equals the one this command gives the run; a run directory of any other config stops the
ablation with the differing fields named, rather than mixing old results into the table.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from atomic_io import read_json
from eval.convergence import tail_improvement
from eval.metrics import ACC_WEIGHT, FMT_WEIGHT, mcnemar, paired_interval, proportion_interval
from eval.run_queue import AblationError, Job, Run, check_same_config, execute  # noqa: F401 (re-exported)
from training.step_log import JsonlLog

ARMS = ("sft", "sft_tag", "key_tag", "sftkey_tag", "sft_tag_continue", "sft_tag_equal", "weighted", "dft")
METRICS = ("acc", "fmt", "score")
STAGE2_ARMS = {"sftkey_tag": "[0,0,1]", "sft_tag_continue": "[0,1,1]"}
MIN_VAL_PROBLEMS = 200
TUNE_SEED = 1000


def steps_per_stage(run_dir):
    steps = {}
    for r in JsonlLog(Path(run_dir) / "log.jsonl").records():
        if r["type"] == "train":
            steps[r["stage"]] = max(steps.get(r["stage"], 0), r["step"])
    return steps


def arm_argv(arm, hp, init=None, stage1_steps=None):
    """train.py overrides for one arm at hyper-parameters hp (after the user's, so that they win)."""
    lr1 = ["--set", f"stage1.lr={hp['stage1.lr']!r}"]
    tagged = ["--set", "style=tagged", "--stage", "1"] + lr1
    if arm in STAGE2_ARMS:
        return ["--set", "style=tagged", "--stage", "2", "--init", str(init)] + lr1 + [
            "--set", f"stage2.weights={STAGE2_ARMS[arm]}", "--set", f"stage2.lr={hp['stage2.lr']!r}"]
    if arm == "sft":
        return ["--set", "style=plain", "--stage", "1", "--set", "stage1.weights=[0,1,1]"] + lr1
    if arm == "key_tag":
        return tagged + ["--set", "stage1.weights=[0,0,1]"]
    if arm == "weighted":
        return tagged + ["--set", f"stage1.weights=[0,1,{hp['key_weight']!r}]"]
    extra = {"sft_tag": [], "sft_tag_equal": ["--set", f"stage1.max_steps={stage1_steps}"],
             "dft": ["--set", "stage1.dft=true"]}[arm]
    return tagged + ["--set", "stage1.weights=[0,1,1]"] + extra


def final_stage(arm):
    return 2 if arm in STAGE2_ARMS else 1


def read_run(run_dir, stage):
    """Metrics and per-question outcomes of one run's evaluation, questions in id order."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "results.json")[f"stage{stage}"]
    predictions = [json.loads(line) for line in
                   (run_dir / f"stage{stage}" / "eval" / "predictions.jsonl").read_text().splitlines()]
    predictions.sort(key=lambda p: p["id"])
    return metrics, {"id": [p["id"] for p in predictions], "kind": [p["kind"] for p in predictions],
                     "correct": [int(p["correct"]) for p in predictions],
                     "format_ok": [int(p["format_ok"]) for p in predictions]}


class Protocol:
    """Builds the runs of one ablation under one --out."""

    def __init__(self, args, extra):
        self.args, self.extra, self.out = args, extra, Path(args.out)

    def run(self, arm, directory, seed, hp, eval_data=None, stage1_dir=None, stage2_dir=None):
        """One run of an arm. stage1_dir: the finished sft_tag run that the stage-2 arms start from
        and whose steps sft_tag_equal adds to those of stage2_dir, a finished sftkey_tag run."""
        init = Path(stage1_dir) / "stage1" / "final" if arm in STAGE2_ARMS else None
        steps = (steps_per_stage(stage1_dir)[1] + steps_per_stage(stage2_dir)[2]
                 if arm == "sft_tag_equal" else None)
        argv = ["--config", self.args.config, "--seed", str(seed)] + self.extra
        argv += (["--set", f"eval_data={eval_data}"] if eval_data else []) + arm_argv(arm, hp, init, steps)
        return Run(Path(directory), argv, final_stage(arm), f"{arm} seed {seed} {fmt_hparams(hp)}")

    def execute(self, jobs):
        return execute(jobs, self.args.jobs)


def grid(center, factors):
    return [center * f for f in factors]


def choose(values, scores, center):
    """The value with the best validation accuracy (ties: Score, then nearest the center, then smaller)."""
    best = max(range(len(values)), key=lambda i: (scores[i]["acc"], scores[i]["score"],
                                                  -abs(math.log(values[i] / center)), -values[i]))
    return values[best]


def validation_file(args, cfg):
    """The validation split's path and problem count; an error when there is none or it is small."""
    from data import load_records
    if args.val_data:
        path = Path(args.val_data)
    elif cfg.data_format == "synthetic":
        from data.synthetic import build_task
        n_val = int(cfg.synthetic.get("n_val", 0))
        if n_val < MIN_VAL_PROBLEMS:
            raise AblationError(f"--tune: synthetic.n_val = {n_val}; set it to at least {MIN_VAL_PROBLEMS} "
                                "(a validation split disjoint from train and test) or pass --val-data")
        # the same parameters as the runs' task, so the same problems: its val.jsonl is the band
        # of problems that train.py's train and test files never hold (data/synthetic.py)
        path = Path(build_task(Path(args.out) / "task", **cfg.synthetic)["val"])
    else:
        raise AblationError("--tune: pass --val-data FILE (problems of the training distribution that "
                            "are in neither the training nor the test file)")
    n = len(load_records(str(path), format="auto" if cfg.data_format == "synthetic" else cfg.data_format))
    if n < MIN_VAL_PROBLEMS:
        raise AblationError(f"--tune: {path} holds {n} problems; the validation split needs at least "
                            f"{MIN_VAL_PROBLEMS}")
    return path, n


def tune(protocol, cfg):
    """Chooses every arm's hyper-parameters on the validation split; returns tuning.json's content."""
    args, out = protocol.args, protocol.out / "tune"
    val_path, n_val = validation_file(args, cfg)
    seed, factors = args.tune_seed, args.grid_factors
    center = {"stage1.lr": cfg.stage1.lr, "stage2.lr": cfg.stage2.lr, "key_weight": args.key_weight}
    sweeps = {"sft_tag": ("stage1.lr", grid(cfg.stage1.lr, factors)),
              "sftkey_tag": ("stage2.lr", grid(cfg.stage2.lr, factors)),
              "sft_tag_continue": ("stage2.lr", grid(cfg.stage2.lr, factors)),
              "weighted": ("key_weight", grid(args.key_weight, factors)),
              **{arm: ("lr", grid(cfg.stage1.lr, factors)) for arm in ("sft", "key_tag", "dft")}}

    def directory(arm, value):
        return out / arm / f"{sweeps[arm][0]}={value:g}"

    def scores(arm, done):
        return [{"value": v, **{m: read_run(done[(arm, v)], final_stage(arm))[0][m] for m in METRICS},
                 "run": str(done[(arm, v)])} for v in sweeps[arm][1]]

    def pick(arm, done):
        param, values = sweeps[arm]
        return choose(values, scores(arm, done), center.get(param, center["stage1.lr"]))

    def job(arm, value):
        stage1_keys = tuple(("sft_tag", v) for v in sweeps["sft_tag"][1])

        def make(done):
            if arm in ("sft_tag", "sft", "key_tag", "dft"):
                return protocol.run(arm, directory(arm, value), seed, {"stage1.lr": value}, val_path)
            lr1 = pick("sft_tag", done)
            if arm == "weighted":
                return protocol.run(arm, directory(arm, value), seed, {"stage1.lr": lr1, "key_weight": value},
                                    val_path)
            return protocol.run(arm, directory(arm, value), seed, {"stage1.lr": lr1, "stage2.lr": value},
                                val_path, stage1_dir=directory("sft_tag", lr1))
        return Job(make, () if arm in ("sft_tag", "sft", "key_tag", "dft") else stage1_keys)

    order = ("sft_tag", "sftkey_tag", "sft_tag_continue", "weighted", "sft", "key_tag", "dft")
    done = protocol.execute({(arm, v): job(arm, v) for arm in order for v in sweeps[arm][1]})
    entries, chosen = [], {}
    for arm in order:
        param, values = sweeps[arm]
        entries.append({"arm": arm, "param": param, "grid": values, "scores": scores(arm, done),
                        "chosen": pick(arm, done)})
        print(f"tune {arm}: {param} = {entries[-1]['chosen']:g} (validation Acc "
              + ", ".join(f"{s['value']:g}: {s['acc']:.3f}" for s in entries[-1]["scores"]) + ")", flush=True)
    lr1 = entries[0]["chosen"]
    pick_of = {e["arm"]: e["chosen"] for e in entries}
    for arm in STAGE2_ARMS:
        chosen[arm] = {"stage1.lr": lr1, "stage2.lr": pick_of[arm]}
    chosen["weighted"] = {"stage1.lr": lr1, "key_weight": pick_of["weighted"]}
    for arm in ("sft", "key_tag", "dft"):
        chosen[arm] = {"stage1.lr": pick_of[arm]}
    chosen["sft_tag"] = chosen["sft_tag_equal"] = {"stage1.lr": lr1}
    return {"validation": {"path": str(val_path), "problems": n_val}, "seed": seed,
            "grid_factors": factors, "centers": center, "entries": entries,
            "chosen": {arm: chosen[arm] for arm in ARMS}}


def untuned(cfg, args):
    hp = {"stage1.lr": cfg.stage1.lr}
    chosen = {arm: dict(hp) for arm in ARMS}
    for arm in STAGE2_ARMS:
        chosen[arm]["stage2.lr"] = cfg.stage2.lr
    chosen["weighted"]["key_weight"] = args.key_weight
    return chosen


def collect(protocol, chosen, seeds, arms):
    """Trains every arm for every seed at its chosen values; returns (runs, per-question outcomes).
    sftkey_tag and sft_tag_continue start from that seed's sft_tag run; sft_tag_equal trains after
    sftkey_tag, whose step count it needs."""
    needs = set(arms) | ({"sftkey_tag"} if "sft_tag_equal" in arms else set())
    if needs & set(STAGE2_ARMS):
        needs.add("sft_tag")

    def job(arm, seed):
        deps = {"sftkey_tag": ("sft_tag",), "sft_tag_continue": ("sft_tag",),
                "sft_tag_equal": ("sft_tag", "sftkey_tag")}.get(arm, ())
        return Job(lambda done: protocol.run(arm, protocol.out / arm / f"seed{seed}", seed, chosen[arm],
                                             stage1_dir=done.get(("sft_tag", seed)),
                                             stage2_dir=done.get(("sftkey_tag", seed))),
                   tuple((d, seed) for d in deps))

    order = [a for a in ("sft_tag", "sftkey_tag", "sft_tag_continue", "sft_tag_equal") if a in needs]
    order += [a for a in ARMS if a in needs and a not in order]
    done = protocol.execute({(arm, seed): job(arm, seed) for arm in order for seed in seeds})
    runs, outcomes = [], {}
    for seed in seeds:
        for arm in arms:
            metrics, per_question = read_run(done[(arm, seed)], final_stage(arm))
            outcomes[(arm, seed)] = per_question
            runs.append({"arm": arm, "seed": seed, "hparams": chosen[arm],
                         **{k: metrics[k] for k in METRICS}, "n": metrics["n"],
                         "acc_by_kind": {k: v["acc"] for k, v in metrics.get("by_kind", {}).items()},
                         "run": str(done[(arm, seed)])})
    return runs, outcomes


def statistics(outcomes, arms, seeds):
    """Per arm: intervals for Acc, Fmt, Score and per-kind Acc; per pair with sftkey_tag: the paired
    interval for each metric and the exact McNemar test of Acc pooled over seeds."""
    def table(arm, metric, kind=None):
        rows = []
        for seed in seeds:
            q = outcomes[(arm, seed)]
            keep = [kind is None or k == kind for k in q["kind"]]
            values = {"acc": q["correct"], "fmt": q["format_ok"],
                      "score": [ACC_WEIGHT * c + FMT_WEIGHT * f for c, f in zip(q["correct"], q["format_ok"])]}[metric]
            rows.append([v for v, k in zip(values, keep) if k])
        return rows

    first = outcomes[(arms[0], seeds[0])]
    for key, q in outcomes.items():
        if q["id"] != first["id"]:
            raise AblationError(f"{key[0]} seed {key[1]} was evaluated on other questions than "
                                f"{arms[0]} seed {seeds[0]}; every run must see the same test split")
    kinds = sorted(set(first["kind"]))
    per_arm = {arm: {**{m: proportion_interval(table(arm, m)) for m in METRICS},
                     "acc_by_kind": {k: proportion_interval(table(arm, "acc", k)) for k in kinds}}
               for arm in arms}
    pairs = {}
    if "sftkey_tag" in arms:
        for arm in arms:
            if arm != "sftkey_tag":
                pairs[arm] = {**{m: paired_interval(table("sftkey_tag", m), table(arm, m)) for m in METRICS},
                              "mcnemar_acc": mcnemar(table("sftkey_tag", "acc"), table(arm, "acc"))}
    return {"kinds": kinds, "questions": len(first["id"]), "arms": per_arm, "pairs": pairs}


def fmt_interval(ci, signed=False):
    sign = "+" if signed else ""
    return f"{ci['mean']:{sign}.3f} [{ci['lo']:{sign}.3f}, {ci['hi']:{sign}.3f}]"


def fmt_hparams(hp):
    return ", ".join(f"{k} {v:g}" for k, v in hp.items())


def render_table(stats, chosen, seeds, tuning=None):
    kinds = stats["kinds"]
    kind_cols = kinds if len(kinds) > 1 else []
    lines = [f"Mean over {len(seeds)} seeds x {stats['questions']} test questions, 95% interval: Wilson on the "
             "pooled mean with an effective sample size from the seed and the question variance "
             "(eval.metrics.proportion_interval).", "",
             "| arm | hyper-parameters | " + " | ".join(m.capitalize() for m in METRICS)
             + "".join(f" | Acc {k}" for k in kind_cols) + " |",
             "|---|---|" + "---|" * (len(METRICS) + len(kind_cols))]
    for arm, s in stats["arms"].items():
        cells = [fmt_interval(s[m]) for m in METRICS] + [fmt_interval(s["acc_by_kind"][k]) for k in kind_cols]
        lines.append(f"| {arm} | {fmt_hparams(chosen[arm])} | " + " | ".join(cells) + " |")
    if stats["pairs"]:
        lines += ["", "sftkey_tag minus each arm on the same seeds and questions: mean and 95% interval "
                  "(seed and question variance, eval.metrics.paired_interval); questions gained and lost "
                  "in Acc over all seeds with the exact McNemar p (eval.metrics.mcnemar).", "",
                  "| sftkey_tag minus | dAcc | gained | lost | McNemar p | dFmt | dScore |",
                  "|---|---|---|---|---|---|---|"]
        for arm, s in stats["pairs"].items():
            m = s["mcnemar_acc"]
            lines.append(f"| {arm} | {fmt_interval(s['acc'], True)} | {m['gained']} | {m['lost']} | "
                         f"{m['p']:.3g} | {fmt_interval(s['fmt'], True)} | {fmt_interval(s['score'], True)} |")
    if tuning:
        lines += ["", f"Tuning on {tuning['validation']['problems']} validation problems, seed {tuning['seed']} "
                  "(validation Acc per grid value; chosen in bold).", "",
                  "| arm | parameter | grid: validation Acc |", "|---|---|---|"]
        for e in tuning["entries"]:
            cells = [(f"**{s['value']:g}: {s['acc']:.3f}**" if s["value"] == e["chosen"] else
                      f"{s['value']:g}: {s['acc']:.3f}") for s in e["scores"]]
            lines.append(f"| {e['arm']} | {e['param']} | " + ", ".join(cells) + " |")
    return "\n".join(lines)


def nll_curves(out, seeds):
    """Per seed: validation CoT and Key NLL of sft_tag's stage 1 and both second stages after it."""
    def read(path):
        return JsonlLog(Path(path) / "log.jsonl").records()

    curves = []
    for seed in seeds:
        stage1 = [r for r in read(out / "sft_tag" / f"seed{seed}") if r["type"] == "val"]
        if not stage1:
            continue
        offset = max(r["step"] for r in stage1)
        entry = {"seed": seed, "stage1": stage1, "stage1_steps": offset}
        for arm in STAGE2_ARMS:
            entry[arm] = [dict(r, step=r["step"] + offset) for r in read(out / arm / f"seed{seed}")
                          if r["type"] == "val"]
        curves.append(entry)
    return curves


def plot(stats, runs, curves, path):
    """Accuracy per arm (one point per seed, mean and interval) and the NLL curves through both stages."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = list(stats["arms"])
    fig, (ax_acc, ax_cot, ax_key) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, arm in enumerate(arms):
        accs = [r["acc"] for r in runs if r["arm"] == arm]
        offsets = [(j - (len(accs) - 1) / 2) * 0.08 for j in range(len(accs))]
        ax_acc.scatter([i + o for o in offsets], accs, s=14, color="tab:blue", zorder=3)
        ci = stats["arms"][arm]["acc"]
        ax_acc.errorbar([i + 0.3], [ci["mean"]], yerr=[[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]],
                        fmt="D", color="black", capsize=3, markersize=4)
    ax_acc.set_xticks(range(len(arms)), arms, rotation=35, ha="right")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_ylabel("test accuracy (dots: seeds; diamond: mean, 95% interval)")
    colors = {"stage1": "tab:gray", "sftkey_tag": "tab:red", "sft_tag_continue": "tab:green"}
    for ax, metric, title in ((ax_cot, "val_cot_nll", "validation CoT NLL"),
                              (ax_key, "val_key_nll", "validation Key NLL")):
        for k, entry in enumerate(curves):
            for part in ("stage1", *STAGE2_ARMS):
                points = [(r["step"], r[metric]) for r in entry.get(part, []) if metric in r]
                if points:
                    label = ("stage 1 (sft_tag)" if part == "stage1" else part) if k == 0 else None
                    ax.plot(*zip(*points), color=colors[part], alpha=0.7, linewidth=1, label=label)
            ax.axvline(entry["stage1_steps"], color="gray", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step (stage 1 | stage 2)")
        ax.set_title(title + " (one line per seed)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prepare_data(args, extra):
    """Builds the task files and token caches once, before parallel runs would race to write them."""
    import train
    for style in ("tagged", "plain") if "sft" in args.arms else ("tagged",):
        train.build_data(train.parse_args(["--config", args.config] + extra + ["--set", f"style={style}"]))


def parse_factors(text):
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--grid-factors {text!r}: distinct positive numbers, e.g. 0.25,1,4")
    return values


def plan(seeds, grid_size, tuning, arms):
    """Counts of runs by kind for the command line (the tuning and the final runs)."""
    single = [a for a in arms if a in ("sft", "key_tag", "weighted", "dft")]
    stage1 = len(seeds) * (len(single) + bool({"sft_tag", *STAGE2_ARMS, "sft_tag_equal"} & set(arms)))
    counts = {"stage-1 runs": stage1, "stage-2 runs": len(seeds) * len(set(STAGE2_ARMS) & set(arms)),
              "equal-compute runs": len(seeds) * ("sft_tag_equal" in arms)}
    if tuning:
        counts["tuning stage-1 runs"] = 5 * grid_size
        counts["tuning stage-2 runs"] = 2 * grid_size
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed0", type=int, default=0, help="first seed")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    p.add_argument("--key-weight", type=float, default=5.0, help="KEY weight of the weighted arm (the "
                   "centre of its grid with --tune)")
    p.add_argument("--tune", action="store_true", help="choose each arm's hyper-parameter on a validation split")
    p.add_argument("--grid-factors", type=parse_factors, default=parse_factors("0.25,1,4"),
                   help="tuning grid: the config's value times each factor (default 0.25,1,4)")
    p.add_argument("--tune-seed", type=int, default=TUNE_SEED, help="seed of the tuning runs")
    p.add_argument("--val-data", help="validation file for --tune when the data is not synthetic")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time: 1 in this process (default), more as "
                   "train.py subprocesses (a GPU that one small run leaves idle)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every run")
    args = p.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if args.seeds < 2:
        p.error("--seeds must be at least 2 for an interval over seeds")
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    if args.tune and args.tune_seed in seeds:
        p.error(f"--tune-seed {args.tune_seed} is one of the final seeds {seeds}: the final seeds must be fresh")
    if args.tune and set(args.arms) != set(ARMS):
        p.error("--tune runs every arm (its stage-1 lr is shared by the tagged arms); drop --arms")
    import train
    extra = [x for s in args.set for x in ("--set", s)]
    cfg = train.parse_args(["--config", args.config] + extra)
    if not cfg.eval:
        raise AblationError("eval = false: the ablation compares the runs' evaluations; drop that setting")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("ablation plan: " + ", ".join(f"{v} {k}" for k, v in
                                        plan(seeds, len(args.grid_factors), args.tune, args.arms).items()), flush=True)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.jobs > 1:
        prepare_data(args, extra)
    protocol = Protocol(args, extra)
    tuning = tune(protocol, cfg) if args.tune else None
    if tuning:
        (out / "tuning.json").write_text(json.dumps(tuning, indent=1) + "\n")
    chosen = tuning["chosen"] if tuning else untuned(cfg, args)
    runs, outcomes = collect(protocol, chosen, seeds, args.arms)
    stats = statistics(outcomes, args.arms, seeds)
    text = render_table(stats, chosen, seeds, tuning)
    convergence = {seed: tail_improvement(JsonlLog(out / "sft_tag" / f"seed{seed}" / "log.jsonl").records(), 1)
        for seed in seeds if (out / "sft_tag" / f"seed{seed}" / "log.jsonl").exists()}
    summary = {"config": args.config, "overrides": args.set, "seeds": seeds, "arms": args.arms,
               "chosen": {arm: chosen[arm] for arm in args.arms}, "tuning": tuning, "runs": runs,
               "statistics": stats, "stage1_convergence": convergence}
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(text + "\n")
    print(text)
    try:
        plot(stats, runs, nll_curves(out, seeds), out / "ablation.png")
        print(f"picture: {out / 'ablation.png'}")
    except ImportError:
        print("matplotlib is not installed: no picture (pip install -r requirements.txt)")
    return summary


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the runs so far are on disk; rerunning resumes
        if type(e).__name__ in ("TrainError", "DataError", "AblationError") or isinstance(e, (OSError, ValueError)):
            sys.exit(f"eval.ablation: {e}")
        raise
