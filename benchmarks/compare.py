"""Runs resnext_tf and torchvision with the same settings, one after another, and tabulates.

    python benchmarks/compare.py --mode=infer --image_size=224 --batch_size=16 \
        --ours=split,grouped,auto,split+fold,grouped+fold --peers=eager,eager+cl,compiled+cl
    python benchmarks/compare.py --suite=pipeline --workers=2 --batch_size=64 --repeats=3

Every configuration is a subprocess (`python -m resnext_tf.benchmark` or
`benchmarks/torchvision_bench.py`) so each starts cold and owns the machine while it runs.
With --repeats N the list is run N times round-robin, which spreads load from other processes
over all configurations; the table shows the median of the per-run medians and the ratio of
each row to every peer. The pipeline suite runs benchmarks/input_pipeline.py (tf.data, both
crop-decode modes) and benchmarks/torch_input_pipeline.py on one folder of JPEGs (generated
500x375 photos unless --data_dir). Model configuration tokens (joined with "+"):
  ours:  auto | grouped | split | block_diagonal, then any of fold (BN folded, TF),
         xla (jit_compile=true), nojit (jit_compile=false)
  peers: eager | compiled, then cl (channels_last)
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from resnext_tf.benchmark import JSON_PREFIX

HERE = os.path.dirname(os.path.abspath(__file__))
OUR_FLAGS = {"fold": "--fold_bn", "xla": "--jit_compile=true", "nojit": "--jit_compile=false"}
PEER_FLAGS = {"eager": None, "compiled": "--compile", "cl": "--channels_last"}


def our_command(token, common, backend):
    impl, *extras = token.split("+")
    flags = [f"--conv_impl={impl}"] + [OUR_FLAGS[e] for e in extras if e in OUR_FLAGS]
    command = [sys.executable, "-m", "resnext_tf.benchmark", *common, *flags]
    return f"resnext_tf[{backend}] {token}", command


def peer_command(token, common):
    flags = [PEER_FLAGS[part] for part in token.split("+") if PEER_FLAGS[part]]
    script = os.path.join(HERE, "torchvision_bench.py")
    return f"torchvision {token}", [sys.executable, script] + common + flags


def parse_json(label, stdout):
    """The result of a harness run: its JSON line, under the configuration's label."""
    for line in stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return {label: json.loads(line[len(JSON_PREFIX) :])}
    return {}


def parse_tf_pipeline(label, stdout):
    """benchmarks/input_pipeline.py prints "fused_crop=<bool>: <rate> images/s" per mode."""
    return {
        f"{label} fused_crop={fused}": {"images_per_sec": float(rate)}
        for fused, rate in re.findall(r"fused_crop=(\w+): ([\d.]+) images/s", stdout)
    }


def run(label, command, parse, env):
    """Runs one configuration; returns {label: result} (empty, after printing why, on failure)."""
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    results = parse(label, proc.stdout)
    if not results:
        print(f"FAILED ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}", flush=True)
    return results


def table(results, peers):
    """Markdown table: median img/s over repeats, range, load, ratio to each peer."""
    medians = {
        label: statistics.median(r["images_per_sec"] for r in runs)
        for label, runs in results.items()
    }
    head = "| configuration | img/s | runs (min-max) | img/CPU-s | peak RSS MB | load |"
    head += "".join(f" x {p} |" for p in peers)
    rows = [head, "|" + "---|" * (6 + len(peers))]
    for label, runs in results.items():
        rates = [r["images_per_sec"] for r in runs]
        cells = [
            f"{medians[label]:.2f}",
            f"{min(rates):.2f}-{max(rates):.2f}",
            _median_cell(runs, "images_per_cpu_sec", "{:.2f}"),
            _median_cell(runs, "peak_rss_mb", "{:.0f}"),
            _median_cell(runs, "load_avg", "{:.1f}"),
        ]
        cells += [f"{medians[label] / medians[p]:.2f}" for p in peers]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _median_cell(runs, key, fmt):
    values = [r[key] for r in runs if r.get(key) is not None]
    return fmt.format(statistics.median(values)) if values else "-"


def model_commands(args):
    """(label, command, parser) of every model configuration."""
    common = [
        f"--{name}={getattr(args, name)}"
        for name in ("mode", "batch_size", "image_size", "dtype", "steps", "windows", "warmup")
    ]
    commands = [our_command(t, common, args.backend) for t in args.ours.split(",") if t]
    commands += [peer_command(t, common) for t in args.peers.split(",") if t]
    return [(label, command, parse_json) for label, command in commands]


def pipeline_commands(args, data_dir):
    """(label, command, parser) of the tf.data pipeline and the torchvision DataLoader."""
    common = [f"--data_dir={data_dir}", f"--batch_size={args.batch_size}"]
    common += [f"--epochs={args.epochs}"]
    tf_data = [sys.executable, os.path.join(HERE, "input_pipeline.py"), *common]
    torch = [sys.executable, os.path.join(HERE, "torch_input_pipeline.py"), *common]
    torch += [f"--workers={args.workers}"]
    label = f"torchvision DataLoader {args.workers} workers"
    return [("resnext_tf.data", tf_data, parse_tf_pipeline), (label, torch, parse_json)]


def write_photos(args):
    """Writes the generated JPEG folder of benchmarks/input_pipeline.py; returns its path."""
    sys.path.insert(0, HERE)
    from input_pipeline import write_jpegs

    data_dir = tempfile.mkdtemp(prefix="resnext_tf_compare_")
    width, height = (int(v) for v in args.photo_size.split("x"))
    write_jpegs(data_dir, args.num_images, width, height)
    return data_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("model", "pipeline"), default="model")
    parser.add_argument("--mode", default="infer")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backend", default="tensorflow", help="KERAS_BACKEND of our runs.")
    parser.add_argument("--ours", default="split,grouped,auto")
    parser.add_argument("--peers", default="eager,eager+cl,compiled+cl")
    parser.add_argument("--data_dir", help="pipeline: ImageNet folder; default generated JPEGs")
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--photo_size", default="500x375")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    data_dir = None
    if args.suite == "pipeline":
        data_dir = args.data_dir or write_photos(args)
        commands = pipeline_commands(args, data_dir)
    else:
        commands = model_commands(args)
    # The repository first, then whatever the caller's PYTHONPATH holds (e.g. carried wheels).
    path = os.pathsep.join(p for p in (os.path.dirname(HERE), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, KERAS_BACKEND=args.backend, PYTHONPATH=path)
    results = {}
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args}", flush=True)
    try:
        for repeat in range(args.repeats):
            for label, command, parse in commands:
                for name, result in run(label, command, parse, env).items():
                    results.setdefault(name, []).append(result)
                    rate = result["images_per_sec"]
                    print(f"[{repeat + 1}/{args.repeats}] {name}: {rate} img/s", flush=True)
    finally:
        if data_dir and not args.data_dir:
            shutil.rmtree(data_dir)
    peers = [label for label in results if label.startswith("torchvision")]
    print(table(results, peers))


if __name__ == "__main__":
    main()
