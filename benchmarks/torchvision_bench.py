"""The peer measurement: torchvision's resnext50_32x4d timed like `benchmarks.model_bench`.

    python -m benchmarks.torchvision_bench --mode=infer --batch_size=16 --image_size=224 \
        --compile --channels_last

Synthetic data sits on the device once. A train step is zero_grad, forward, cross-entropy,
backward and SGD (momentum 0.9) step; infer runs the forward under torch.inference_mode in
eval mode. `--compile` wraps the model in torch.compile (inductor; on CPU it builds C++ with
the system compiler). `--dtype=bfloat16|float16` runs the forward under torch.autocast. The
timing, summary and JSON line are `benchmarks.model_bench`'s (benchmarks/timing.py, which
imports neither Keras nor TensorFlow), so the two sides compare exactly. A train step needs --lr
and --momentum; benchmarks.compare passes the recipe's.
"""

import argparse
import os

import torch
import torchvision

from benchmarks import timing

AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--mode", choices=timing.MODES, default="train")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--dtype", choices=tuple(AUTOCAST_DTYPES), default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model.")
    parser.add_argument("--channels_last", action="store_true", help="NHWC memory format.")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--latency_calls",
        type=int,
        default=0,
        help="then time this many batch-1 calls one by one (p50, p99); infer mode only",
    )
    parser.add_argument("--lr", type=float, help="SGD learning rate (train mode)")
    parser.add_argument("--momentum", type=float, help="SGD momentum (train mode)")
    args = parser.parse_args(argv)
    if args.mode == "train" and (args.lr is None or args.momentum is None):
        parser.error("--mode=train needs --lr and --momentum (compare.py passes the recipe's)")
    return args


def device_peak_mb(device):
    """Peak CUDA memory in MB, or None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def make_step(args, device):
    """Returns step() for the configured mode, model and data on `device`."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = torchvision.models.get_model(args.model).to(device, memory_format=fmt)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    forward = torch.compile(model) if args.compile else model
    dtype = AUTOCAST_DTYPES[args.dtype]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    if args.mode == "infer":
        model.eval()

        @torch.inference_mode()
        def step():
            with autocast():
                return forward(images)

        return step
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "float16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step = make_step(args, device)

    def sync(out):
        if device.type == "cuda":
            torch.cuda.synchronize()

    warmup_s, seconds, cpu_seconds = timing.time_windows(
        step, sync, args.steps, args.windows, args.warmup
    )
    latency = {}
    if args.latency_calls and args.mode == "infer":
        # A batch-1 model of its own (torch.compile specialises on the shape).
        one = make_step(argparse.Namespace(**{**vars(args), "batch_size": 1}), device)
        latency = timing.latency_percentiles(
            one, sync, args.latency_calls, warmup=max(args.warmup, 3)
        )
    variant = ("compiled" if args.compile else "eager") + (
        " channels_last" if args.channels_last else ""
    )
    timing.emit(
        {
            "framework": "torchvision",
            "variant": variant,
            "model": args.model,
            "mode": args.mode,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "dtype": args.dtype,
            "compile": args.compile,
            "channels_last": args.channels_last,
            "threads": args.threads,
            "data": "synthetic",
            **timing.throughput(args.batch_size, args.steps, seconds, cpu_seconds),
            "warmup_s": round(warmup_s, 1),
            "peak_rss_mb": timing.peak_host_memory_mb(),
            "device_peak_mb": device_peak_mb(device),
            "load_avg": timing.machine_load(),
            **latency,
        }
    )


if __name__ == "__main__":
    main()
