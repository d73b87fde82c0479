"""Runs resnext_tf and torchvision with the same settings, one after another, and tabulates.

    python -m benchmarks.compare --mode=infer --image_size=224 --batch_size=16 \
        --ours=split,grouped,auto,split+fold,grouped+fold --peers=eager,eager+cl,compiled+cl
    python -m benchmarks.compare --suite=pipeline --workers=2 --batch_size=64 --repeats=3
    python -m benchmarks.compare --ours= --exported=saved_model,saved_model+bf16,openvino,onnx \
        --peers=compiled+cl+bf16 --latency_calls=50
    python -m benchmarks.compare --ours= --peers=compiled+cl+freeze,fx_int8 --latency_calls=50 \
        --exported=saved_model,openvino+int8,onnx+int8,litert+int8 --repeats=3

Run it from the repository root. Every configuration is a subprocess (`python -m
benchmarks.model_bench` or `python -m benchmarks.torchvision_bench`, with the repository root as
its working directory and first on its PYTHONPATH) so each starts cold and owns the machine
while it runs.
With --repeats N the list is run N times round-robin, which spreads load from other processes
over all configurations; the table shows the median of the per-run medians and the ratio of
each row to every peer. The pipeline suite runs benchmarks.input_pipeline (tf.data, both
crop-decode modes) and benchmarks.torch_input_pipeline on one folder of JPEGs (generated
500x375 photos unless --data_dir). Model configuration tokens (joined with "+"):
  ours:  auto | grouped | split | block_diagonal, then any of fold (BN folded, TF),
         xla (jit_compile=true), nojit (jit_compile=false), dnn / nodnn (oneDNN forced on / off)
  peers: eager | compiled, then cl (channels_last), bf16 (autocast to bfloat16), freeze
         (compiled, inference: inductor's freezing); or fx_int8
         (FX graph-mode post-training INT8, x86 backend, calibrated, TorchScript-frozen)
  exported: saved_model | onnx | openvino | litert, then bf16 (the SavedModel computes in
         bfloat16; OpenVINO compiles the IR with INFERENCE_PRECISION_HINT=bf16) or f32; or
         onnx | openvino | litert, then int8 (`--precision=int8`)
Each exported artefact is written once by `python -m resnext_tf.export` (random weights of
--model, or the model of the training run --export_model_dir) into a temporary folder and timed
by benchmarks.deploy_bench in its own runtime. The INT8 exports are calibrated on
--calibration_images generated photos: with random weights they are for timing only.
--latency_calls N adds batch-1 latency (p50, p99 of N calls) to the exported and peer rows.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchmarks.timing import JSON_PREFIX
from resnext_tf import hardware, recipes

# The repository root: the children's working directory, where `benchmarks` imports from.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_FLAGS = {"fold": "--fold_bn", "xla": "--jit_compile=true", "nojit": "--jit_compile=false"}
# TF_ENABLE_ONEDNN_OPTS of our runs: "dnn" forces oneDNN on, "nodnn" off (TensorFlow's own
# kernels, its default on CPUs without AVX512-VNNI, AVX512-BF16 or AMX); neither keeps the
# library's default (resnext_tf.hardware.request_onednn).
ONEDNN_TOKENS = {"dnn": "1", "nodnn": "0"}
# Variables that change which kernels the runs pick or how their threads wait, printed in the
# header when set (e.g. ONEDNN_MAX_CPU_ISA=AVX2 limits oneDNN, in TensorFlow and PyTorch, to
# AVX2 kernels; OMP_WAIT_POLICY=PASSIVE stops PyTorch's OpenMP threads spinning, which a
# machine shared with other jobs punishes).
KERNEL_ENV = (
    "TF_ENABLE_ONEDNN_OPTS",
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
)
PEER_FLAGS = {
    "eager": None,
    "compiled": "--compile",
    "cl": "--channels_last",
    "bf16": "--dtype=bfloat16",
    "fx_int8": "--fx_int8",
    "freeze": "--freeze",
}
EXPORTED_FORMATS = ("saved_model", "onnx", "openvino", "litert")
INT8_FORMATS = ("onnx", "openvino", "litert")
OPENVINO_PRECISIONS = {"bf16": "bf16", "f32": "f32"}


def our_command(token, common, backend):
    impl, *extras = token.split("+")
    flags = [f"--conv_impl={impl}"] + [OUR_FLAGS[e] for e in extras if e in OUR_FLAGS]
    command = [sys.executable, "-m", "benchmarks.model_bench", *common, *flags]
    onednn = [ONEDNN_TOKENS[e] for e in extras if e in ONEDNN_TOKENS]
    if onednn:
        command = ["env", f"TF_ENABLE_ONEDNN_OPTS={onednn[-1]}", *command]
    return f"resnext_tf[{backend}] {token}", command


def peer_command(token, common):
    flags = [PEER_FLAGS[part] for part in token.split("+") if PEER_FLAGS[part]]
    if "--dtype=bfloat16" in flags:
        common = [c for c in common if not c.startswith("--dtype=")]
    # The recipe's SGD, as benchmarks.model_bench's train step uses it.
    flags += [f"--lr={recipes.LR}", f"--momentum={recipes.MOMENTUM}"]
    command = [sys.executable, "-m", "benchmarks.torchvision_bench", *common, *flags]
    return f"torchvision {token}", command


def exported_artefact(token):
    """(format, export dtype or "int8", OpenVINO precision or None) of an exported token."""
    fmt, *extras = token.split("+")
    if extras == ["int8"] and fmt in INT8_FORMATS:
        return fmt, "int8", "f32" if fmt == "openvino" else None
    if fmt not in EXPORTED_FORMATS or any(e not in OPENVINO_PRECISIONS for e in extras):
        raise ValueError(f"Unknown exported configuration {token!r}.")
    bf16 = "bf16" in extras
    if fmt == "openvino":
        return fmt, "float32", "bf16" if bf16 else "f32"
    return fmt, "bfloat16" if bf16 else "float32", None


def export_commands(args, tokens, folder):
    """The commands that write each artefact the exported tokens need (once each), and
    {token: version directory}."""
    commands = []
    if args.export_model_dir:
        source = [f"--model_dir={os.path.abspath(args.export_model_dir)}"]
    else:
        weights = os.path.join(folder, "model.weights.h5")
        save = (
            f"import resnext_tf; resnext_tf.create_model({args.model!r}).save_weights({weights!r})"
        )
        commands.append([sys.executable, "-c", save])
        source = [f"--model={args.model}", f"--weights={weights}"]
    paths = {}
    for token in tokens:
        fmt, dtype, _ = exported_artefact(token)
        name = f"{fmt}_{dtype}"
        path = os.path.join(folder, name, "1")
        if path not in paths.values():
            if dtype == "int8":
                precision = ["--precision=int8", f"--calibration_data={args.calibration_dir}"]
                precision += [f"--calibration_images={args.calibration_images}"]
                precision += ["--held_out_images=0"]  # random weights: nothing to agree on
            else:
                precision = [f"--dtype={dtype}"]
            commands.append(
                [sys.executable, "-m", "resnext_tf.export", *source]
                + [f"--export_dir={folder}", f"--model_name={name}", "--version=1"]
                + [f"--format={fmt}", *precision, "--no_warmup"]
            )
        paths[token] = path
    return commands, paths


def write_calibration_photos(args, folder):
    """A folder of generated photos (benchmarks.input_pipeline's) to calibrate INT8 with."""
    from benchmarks.input_pipeline import write_jpegs

    width, height = (int(v) for v in args.photo_size.split("x"))
    write_jpegs(folder, args.calibration_images, width, height)
    return folder


def exported_command(token, path, args):
    _, _, precision = exported_artefact(token)
    command = [sys.executable, "-m", "benchmarks.deploy_bench", f"--path={path}"]
    command += [
        f"--{name}={getattr(args, name)}"
        for name in ("batch_size", "steps", "windows", "warmup", "latency_calls")
    ]
    if precision:
        command.append(f"--precision={precision}")
    return f"exported {token}", command


def machine_header():
    """The CPU, its instruction sets and the kernel-choosing variables, for the log's head."""
    flags = hardware.cpu_flags()
    isa = hardware.cpu_isa(flags)
    settings = [f"{name}={os.environ[name]}" for name in KERNEL_ENV if name in os.environ]
    onednn = (
        "TensorFlow turns oneDNN on by itself"
        if flags and flags & set(hardware.ONEDNN_DEFAULT_FLAGS)
        else "TensorFlow leaves oneDNN off unless asked (resnext_tf asks)"
    )
    return (
        f"CPU: {hardware.cpu_model()} ({isa}), {os.cpu_count()} logical CPUs; {onednn}; "
        f"kernel settings: {', '.join(settings) or 'none'}"
    )


def parse_json(label, stdout):
    """The result of a harness run: its JSON line, under the configuration's label."""
    for line in stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return {label: json.loads(line[len(JSON_PREFIX) :])}
    return {}


def parse_tf_pipeline(label, stdout):
    """benchmarks.input_pipeline prints "fused_crop=<bool>: <rate> images/s" per mode."""
    return {
        f"{label} fused_crop={fused}": {"images_per_sec": float(rate)}
        for fused, rate in re.findall(r"fused_crop=(\w+): ([\d.]+) images/s", stdout)
    }


def run(label, command, parse, env):
    """Runs one configuration; returns {label: result} (empty, after printing why, on failure)."""
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
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
    head = "| configuration | oneDNN | img/s | runs (min-max) | img/CPU-s | peak RSS MB | load |"
    latency = any(r.get("p50_ms") is not None for runs in results.values() for r in runs)
    if latency:
        head += " bs1 p50 ms | bs1 p99 ms |"
    head += "".join(f" x {p} |" for p in peers)
    rows = [head, "|" + "---|" * (7 + 2 * latency + len(peers))]
    for label, runs in results.items():
        rates = [r["images_per_sec"] for r in runs]
        onednn = {r.get("onednn") for r in runs}
        cells = [
            "/".join(sorted({True: "on", False: "off"}.get(v, "-") for v in onednn)),
            f"{medians[label]:.2f}",
            f"{min(rates):.2f}-{max(rates):.2f}",
            _median_cell(runs, "images_per_cpu_sec", "{:.2f}"),
            _median_cell(runs, "peak_rss_mb", "{:.0f}"),
            _median_cell(runs, "load_avg", "{:.1f}"),
        ]
        if latency:
            cells += [
                _median_cell(runs, "p50_ms", "{:.1f}"),
                _median_cell(runs, "p99_ms", "{:.1f}"),
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
    latency = [f"--latency_calls={args.latency_calls}"] if args.latency_calls else []
    commands += [peer_command(t, common + latency) for t in args.peers.split(",") if t]
    commands += [exported_command(t, path, args) for t, path in args.exported_paths.items()]
    return [(label, command, parse_json) for label, command in commands]


def pipeline_commands(args, data_dir):
    """(label, command, parser) of the tf.data pipeline and the torchvision DataLoader."""
    common = [f"--data_dir={data_dir}", f"--batch_size={args.batch_size}"]
    common += [f"--epochs={args.epochs}"]
    tf_data = [sys.executable, "-m", "benchmarks.input_pipeline", *common]
    torch = [sys.executable, "-m", "benchmarks.torch_input_pipeline", *common]
    torch += [f"--workers={args.workers}"]
    label = f"torchvision DataLoader {args.workers} workers"
    return [("resnext_tf.data", tf_data, parse_tf_pipeline), (label, torch, parse_json)]


def write_photos(args):
    """Writes the generated JPEG folder of benchmarks.input_pipeline; returns its path."""
    from benchmarks.input_pipeline import write_jpegs

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
    parser.add_argument("--exported", default="", help="exported artefacts, e.g. openvino+bf16")
    parser.add_argument("--model", default="resnext50_32x4d", help="model of the exports")
    parser.add_argument(
        "--export_model_dir", help="export this training run's model instead of --model's"
    )
    parser.add_argument(
        "--calibration_images",
        type=int,
        default=32,
        help="generated photos that calibrate the INT8 exports (timing only)",
    )
    parser.add_argument("--latency_calls", type=int, default=0, help="batch-1 calls timed")
    parser.add_argument("--data_dir", help="pipeline: ImageNet folder; default generated JPEGs")
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--photo_size", default="500x375")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    data_dir = None
    export_dir = None
    args.exported_paths = {}
    tokens = [t for t in args.exported.split(",") if t]
    if tokens and args.suite == "model":
        export_dir = tempfile.mkdtemp(prefix="resnext_tf_exports_")
        args.calibration_dir = os.path.join(export_dir, "calibration_photos")
        writes, args.exported_paths = export_commands(args, tokens, export_dir)
    if args.suite == "pipeline":
        # The children run in the repository root: a relative folder is the caller's.
        data_dir = os.path.abspath(args.data_dir) if args.data_dir else write_photos(args)
        commands = pipeline_commands(args, data_dir)
    else:
        commands = model_commands(args)
    # The repository first, then whatever the caller's PYTHONPATH holds (e.g. carried wheels).
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, KERAS_BACKEND=args.backend, PYTHONPATH=path)
    results = {}
    failed = []
    # The log names the command that reproduces it, from the repository root.
    invocation = shlex.join(["-m", "benchmarks.compare", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: python {invocation}", flush=True)
    print(machine_header(), flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args}", flush=True)
    if any(exported_artefact(t)[1] == "int8" for t in args.exported_paths):
        weights = f"the run {args.export_model_dir}" if args.export_model_dir else "random weights"
        print(
            f"INT8 exports: calibrated on {args.calibration_images} generated (synthetic) photos, "
            f"{weights}: their rows time INT8, they say nothing of its accuracy",
            flush=True,
        )
    try:
        if any(exported_artefact(t)[1] == "int8" for t in args.exported_paths):
            write_calibration_photos(args, args.calibration_dir)
        for command in writes if export_dir else []:
            proc = subprocess.run(
                command, env=env, cwd=REPO, capture_output=True, text=True, check=False
            )
            if proc.returncode:
                raise SystemExit(f"FAILED: {' '.join(command)}\n{proc.stderr[-3000:]}")
        for repeat in range(args.repeats):
            for label, command, parse in commands:
                measured = run(label, command, parse, env)
                if not measured:
                    failed.append(label)
                for name, result in measured.items():
                    results.setdefault(name, []).append(result)
                    rate = result["images_per_sec"]
                    print(f"[{repeat + 1}/{args.repeats}] {name}: {rate} img/s", flush=True)
    finally:
        if data_dir and not args.data_dir:
            shutil.rmtree(data_dir)
        if export_dir:
            shutil.rmtree(export_dir)
    peers = [label for label in results if label.startswith("torchvision")]
    print(table(results, peers))
    if failed:
        # The table holds what ran; a configuration that did not run fails the command.
        raise SystemExit(f"{len(failed)} configuration(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
