"""Training curves of one or several runs into one PNG, from their log.jsonl.

    python -m eval.plot runs/demo --out runs/demo/curves.png
    python -m eval.plot runs/a runs/b runs/c --out compare.png

Four panels over optimizer steps (stage 2 continues stage 1's count, after the dotted line):
training loss; CoT and Key loss (the training batches' mean NLL per role, solid / dashed);
validation NLL of the CoT and Key tokens (held-out examples, both stages); learning rate. Losses on
a log scale. Each run has its colour; the legend shows Acc / Fmt from results.json when it exists.
"""
import argparse
import json
import sys
from pathlib import Path

PANELS = (("training loss", ("loss",)), ("CoT (solid) / Key (dashed) loss, training batches", ("cot_loss", "key_loss")),
          ("validation NLL: CoT (solid) / Key (dashed)", ("val_cot_nll", "val_key_nll")), ("learning rate", ("lr",)))
STYLES = {"loss": "-", "cot_loss": "-", "key_loss": "--", "val_cot_nll": "-", "val_key_nll": "--", "lr": "-"}


class PlotError(ValueError):
    """A run folder or log that cannot be plotted: names the file (and line)."""


def read_log(run_dir):
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: no such file (is {run_dir} a run folder of train.py?)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("stage"), int) or not isinstance(record.get("step"), int):
            raise PlotError(f"{path}:{n}: a step-log line needs integer 'stage' and 'step'")
        records.append(record)
    if not records:
        raise PlotError(f"{path}: empty")
    return records


def series(records):
    """({metric: ([step], [value])} with stage 2's steps after stage 1's, stage-2 start or None)."""
    last_step = {}
    for r in records:
        last_step[r["stage"]] = max(last_step.get(r["stage"], 0), r["step"])
    offset = {1: 0, 2: last_step.get(1, 0)}
    out = {}
    for r in sorted(records, key=lambda r: (r["stage"], r["step"])):
        for name in STYLES:
            value = r.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                xs, ys = out.setdefault(name, ([], []))
                xs.append(r["step"] + offset.get(r["stage"], 0))
                ys.append(value)
    return out, (offset[2] if 2 in last_step and 1 in last_step else None)


def run_label(run_dir):
    label = Path(run_dir).resolve().name
    results = Path(run_dir) / "results.json"
    if results.is_file():
        try:
            metrics = json.loads(results.read_text())
            label += "".join(f"; s{k[-1]} Acc {m['acc']:.2f} Fmt {m['fmt']:.2f}" for k, m in sorted(metrics.items())
                             if isinstance(m, dict) and "acc" in m)
        except (json.JSONDecodeError, TypeError, KeyError):
            pass  # the curves do not need the results
    return label


def plot(run_dirs, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, run_dir in enumerate(run_dirs):
        colour = colours[k % len(colours)]
        curves, stage2_start = series(read_log(run_dir))
        for ax, (title, names) in zip(axes.flat, PANELS):
            for name in names:
                if name in curves:
                    xs, ys = curves[name]
                    marker = "o" if name.startswith("val_") else None
                    ax.plot(xs, ys, STYLES[name], color=colour, marker=marker, markersize=3, linewidth=1.2,
                            label=f"{run_label(run_dir)}: {name}" if ax is axes.flat[0] or len(run_dirs) == 1 else None)
            if stage2_start is not None:
                ax.axvline(stage2_start + 0.5, color=colour, linestyle=":", linewidth=1)
    for ax, (title, names) in zip(axes.flat, PANELS):
        ax.set_title(title)
        ax.set_xlabel("optimizer step (stage 2 after the dotted line)")
        ax.grid(alpha=0.3)
        if names != ("lr",) and any(line.get_ydata().min() > 0 for line in ax.lines if len(line.get_ydata())):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 2, 3, 4, not 2 x 10^0
            low, high = ax.get_ylim()
            # labels on the minor ticks (2, 3, 4, ...) only where the axis spans under two decades
            ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g") if high / low < 100
                                         else ticker.NullFormatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with log.jsonl)")
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)
    try:
        plot(args.runs, args.out)
    except PlotError as e:
        sys.exit(f"eval.plot: {e}")
    print(f"eval.plot: {args.out}")


if __name__ == "__main__":
    main()
