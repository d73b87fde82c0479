"""The peer measurement: torchvision's resnext50_32x4d timed like `benchmarks.model_bench`.

    python -m benchmarks.torchvision_bench --mode=infer --batch_size=16 --image_size=224 \
        --compile --channels_last [--freeze]
    python -m benchmarks.torchvision_bench --mode=infer --batch_size=16 --fx_int8

Synthetic data sits on the device once. A train step is zero_grad, forward, cross-entropy,
backward and SGD (momentum 0.9) step; infer runs the forward under torch.inference_mode in
eval mode. `--compile` wraps the model in torch.compile (inductor; on CPU it builds C++ with
the system compiler; `dynamic=False`, so that the batch-1 latency model is compiled for its own
shape rather than as a dynamic-shape graph); `--freeze` adds inductor's freezing for inference
(weights folded as constants; the float32 channels_last inference graph without it crashed
with heap corruption at 224px on this project's Sapphire Rapids machine, torch 2.14.1).
`--dtype=bfloat16|float16` runs the forward under torch.autocast. The timing, summary and JSON
line are `benchmarks.model_bench`'s (benchmarks/timing.py, which imports neither Keras nor
TensorFlow), so the two sides compare exactly. A train step needs --lr
and --momentum; benchmarks.compare passes the recipe's.

`--fx_int8` (CPU inference) times the model after FX graph-mode post-training quantization
(torch.ao.quantization, the x86 backend's default qconfig: uint8 activations with histogram
observers, int8 weights per channel, BatchNorm folded, add + ReLU fused), calibrated on
--calibration_images synthetic images, then traced and frozen with TorchScript. torchvision
ships no quantizable resnext50_32x4d (only resnext101's), so FX quantizes the plain model;
torch 2.14 warns that torch.ao.quantization is deprecated.
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
    parser.add_argument(
        "--freeze", action="store_true", help="with --compile: inductor freezing (inference)"
    )
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
    parser.add_argument(
        "--fx_int8", action="store_true", help="FX graph-mode post-training INT8 (CPU, infer)"
    )
    parser.add_argument(
        "--calibration_images", type=int, default=16, help="synthetic images that calibrate it"
    )
    parser.add_argument("--lr", type=float, help="SGD learning rate (train mode)")
    parser.add_argument("--momentum", type=float, help="SGD momentum (train mode)")
    args = parser.parse_args(argv)
    if args.mode == "train" and (args.lr is None or args.momentum is None):
        parser.error("--mode=train needs --lr and --momentum (compare.py passes the recipe's)")
    if args.freeze and not (args.compile and args.mode == "infer"):
        parser.error("--freeze is inductor's inference freezing: it needs --compile, --mode=infer")
    if args.fx_int8 and (
        args.mode != "infer" or args.compile or args.channels_last or args.dtype != "float32"
    ):
        parser.error("--fx_int8 is an inference model of its own: --mode=infer, no other option")
    return args


def device_peak_mb(device):
    """Peak CUDA memory in MB, or None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def fx_int8(model, image_size, count, batch=8):
    """`model` after FX post-training INT8 (x86), calibrated on `count` synthetic images,
    traced and frozen."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, image_size, image_size, generator=generator)
    prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), (example,))
    with torch.inference_mode():
        for start in range(0, count, batch):
            size = min(batch, count - start)
            prepared(torch.randn(size, 3, image_size, image_size, generator=generator))
        quantized = convert_fx(prepared)
        return torch.jit.freeze(torch.jit.trace(quantized, example).eval())


def make_step(args, device, forward=None):
    """Returns (step(), forward model) for the configured mode, model and data on `device`;
    `forward` reuses a model built before (an FX INT8 model, at another batch size)."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = None
    if forward is None:
        model = torchvision.models.get_model(args.model).to(device, memory_format=fmt)
        if args.fx_int8:
            forward = fx_int8(model, args.image_size, args.calibration_images)
        else:
            forward = torch.compile(model, dynamic=False) if args.compile else model
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    dtype = AUTOCAST_DTYPES[args.dtype]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    if args.mode == "infer":
        if model is not None:
            model.eval()

        @torch.inference_mode()
        def step():
            with autocast():
                return forward(images)

        return step, forward
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

    return step, forward


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.freeze:
        torch._inductor.config.freezing = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.fx_int8:
        device = torch.device("cpu")  # quantized kernels run on the CPU
    step, forward = make_step(args, device)

    def sync(out):
        if device.type == "cuda":
            torch.cuda.synchronize()

    warmup_s, seconds, cpu_seconds = timing.time_windows(
        step, sync, args.steps, args.windows, args.warmup
    )
    latency = {}
    if args.latency_calls and args.mode == "infer":
        # A batch-1 model of its own (torch.compile specialises on the shape); the FX INT8
        # model is reused (calibrated once).
        one, _ = make_step(
            argparse.Namespace(**{**vars(args), "batch_size": 1}),
            device,
            forward if args.fx_int8 else None,
        )
        latency = timing.latency_percentiles(
            one, sync, args.latency_calls, warmup=max(args.warmup, 3)
        )
    variant = ("compiled" if args.compile else "eager") + (
        " channels_last" if args.channels_last else ""
    )
    variant += " frozen" if args.freeze else ""
    if args.fx_int8:
        variant = f"fx_int8 x86 TorchScript, {args.calibration_images} calibration images"
    timing.emit(
        {
            "framework": "torchvision",
            "variant": variant,
            "model": args.model,
            "mode": args.mode,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "dtype": "int8" if args.fx_int8 else args.dtype,
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
