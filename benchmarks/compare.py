"""Runs resnext_tf and torchvision with the same settings, one after another, and tabulates.

    python benchmarks/compare.py --mode=infer --image_size=224 --batch_size=16 \
        --ours=split,grouped,auto,split+fold,grouped+fold --peers=eager,eager+cl,compiled+cl

Every configuration is a subprocess (`python -m resnext_tf.benchmark` or
`benchmarks/torchvision_bench.py`) so each starts cold and owns the machine while it runs.
With --repeats N the list is run N times round-robin, which spreads load from other processes
over all configurations; the table shows the median of the per-run medians and the ratio of
each row to every peer. Configuration tokens (joined with "+"):
  ours:  split | grouped | auto, then any of fold (BN folded, TF), xla (jit_compile=true),
         nojit (jit_compile=false), nconv / nbn (what-if: benchmarks/tf_native_ops.py)
  peers: eager | compiled, then cl (channels_last)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from resnext_tf.benchmark import JSON_PREFIX

HERE = os.path.dirname(os.path.abspath(__file__))
OUR_FLAGS = {"fold": "--fold_bn", "xla": "--jit_compile=true", "nojit": "--jit_compile=false"}
# What-if tokens: benchmarks/tf_native_ops.py with TF-native grouped conv / fused BN.
NATIVE_OPS = {"nconv": "conv", "nbn": "bn"}
PEER_FLAGS = {"eager": None, "compiled": "--compile", "cl": "--channels_last"}


def our_command(token, common, backend):
    impl, *extras = token.split("+")
    flags = [f"--conv_impl={impl}"] + [OUR_FLAGS[e] for e in extras if e in OUR_FLAGS]
    native = [NATIVE_OPS[e] for e in extras if e in NATIVE_OPS]
    if native:
        script = [os.path.join(HERE, "tf_native_ops.py"), f"--native={','.join(native)}"]
    else:
        script = ["-m", "resnext_tf.benchmark"]
    return f"resnext_tf[{backend}] {token}", [sys.executable, *script, *common, *flags]


def peer_command(token, common):
    flags = [PEER_FLAGS[part] for part in token.split("+") if PEER_FLAGS[part]]
    script = os.path.join(HERE, "torchvision_bench.py")
    return f"torchvision {token}", [sys.executable, script] + common + flags


def run(command, env):
    """Runs one configuration; returns its parsed JSON result, or None (and prints why)."""
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return json.loads(line[len(JSON_PREFIX) :])
    print(f"FAILED ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}", flush=True)
    return None


def table(labels, results, peers):
    """Markdown table: median img/s over repeats, range, load, ratio to each peer."""
    medians = {
        label: statistics.median(r["images_per_sec"] for r in results[label])
        for label in labels
        if results[label]
    }
    head = "| configuration | img/s | runs (min-max) | peak RSS MB | load |"
    head += "".join(f" x {p} |" for p in peers)
    rows = [head, "|" + "---|" * (5 + len(peers))]
    for label in labels:
        runs = results[label]
        if not runs:
            rows.append(f"| {label} | failed |" + " |" * (3 + len(peers)))
            continue
        rates = [r["images_per_sec"] for r in runs]
        ratios = "".join(
            f" {medians[label] / medians[p]:.2f} |" if p in medians else " - |" for p in peers
        )
        rows.append(
            f"| {label} | {medians[label]:.2f} | {min(rates):.2f}-{max(rates):.2f} | "
            f"{max(r['peak_rss_mb'] for r in runs):.0f} | "
            f"{statistics.median(r['load_avg'] for r in runs):.1f} |{ratios}"
        )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args = parser.parse_args(argv)

    common = [
        f"--{name}={getattr(args, name)}"
        for name in ("mode", "batch_size", "image_size", "dtype", "steps", "windows", "warmup")
    ]
    commands = [our_command(t, common, args.backend) for t in args.ours.split(",") if t]
    commands += [peer_command(t, common) for t in args.peers.split(",") if t]
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    results = {label: [] for label, _ in commands}
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args}", flush=True)
    for repeat in range(args.repeats):
        for label, command in commands:
            result = run(command, env)
            if result:
                results[label].append(result)
                print(
                    f"[{repeat + 1}/{args.repeats}] {label}: {result['images_per_sec']} img/s "
                    f"(load {result['load_avg']})",
                    flush=True,
                )
    peers = [label for label, _ in commands if label.startswith("torchvision")]
    print(table([label for label, _ in commands], results, peers))


if __name__ == "__main__":
    main()
