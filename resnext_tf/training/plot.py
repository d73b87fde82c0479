"""Training curves in the paper's style: top-1 error vs. epoch, train dashed, val solid, one
color per run (Xie et al., Fig. 5 / 7).

    python -m resnext_tf.training.plot --runs runs/a,runs/b --out curves.png

Reads each run's train_log.csv; needs matplotlib (pip install "resnext_tf[plot]").
"""

import argparse
import os

from resnext_tf.training.run_log import CSV_FILE, read_csv


def load_curves(run_dir):
    """(epochs, train top-1 error, val top-1 error) lists of one run directory.

    Raises:
        ValueError: when the directory has no train_log.csv.
    """
    path = os.path.join(run_dir, CSV_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"No {CSV_FILE} in run directory; received run_dir={run_dir!r}.")
    rows = read_csv(path)
    return (
        [r["epoch"] for r in rows],
        [r["train_top1"] for r in rows],
        [r["val_top1"] for r in rows],
    )


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise ImportError(
            'Plotting needs matplotlib, the optional "plot" extra: pip install "resnext_tf[plot]" '
            "(or pip install matplotlib)."
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_runs(run_dirs, out, labels=None):
    """Draws the top-1 error curves of `run_dirs` into the image file `out`.

    Args:
        run_dirs: run directories (model_dir of each run).
        out: output image path (.png, .pdf, .svg).
        labels: legend names; default: the directory names.
    """
    plt = _pyplot()
    labels = labels or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run_dir, label) in enumerate(zip(run_dirs, labels, strict=True)):
        epochs, train, val = load_curves(run_dir)
        color = colors[i % len(colors)]
        axes.plot(epochs, train, linestyle="--", color=color, label=f"{label} (train)")
        axes.plot(epochs, val, linestyle="-", color=color, label=f"{label} (val)")
    axes.set_xlabel("epochs")
    axes.set_ylabel("top-1 error (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv=None):
    """Command line: --runs DIR1,DIR2 --out curves.png [--labels A,B]."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument("--out", required=True, help="output image file")
    parser.add_argument("--labels", default=None, help="comma-separated legend names")
    args = parser.parse_args(argv)
    runs = args.runs.split(",")
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(runs):
        parser.error(f"--labels needs one name per run; received {len(labels)} for {len(runs)}.")
    try:
        plot_runs(runs, args.out, labels)
    except (ImportError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
