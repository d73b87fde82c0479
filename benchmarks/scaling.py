"""Scaling on paper: data-parallel ResNeXt-50 32x4d training on 8 and 64 GPUs from one GPU's rate.

    python -m benchmarks.scaling
    python -m benchmarks.scaling --gpu_images_per_sec 5097 --node_gbits 100,400

Model of one synchronous data-parallel step (tf.distribute all-reduces the gradients with NCCL
rings; BN statistics stay per replica as in the original):
  compute    t_c = B / R                       (B images per GPU, R single-GPU images/s)
  all-reduce t_a = 2 (n - 1) / n * G / W + 2 (n - 1) * a
             G = params * 4 bytes (fp32 gradients), W = bandwidth of the slowest ring edge
             (NVLink inside a node; the node's network link once the ring spans nodes),
             a = per-hop latency of a ring step
  step       no overlap: t_c + t_a;   full overlap: max(t_c, t_a)
  cluster    n * B / step images/s;   time = epochs * images / cluster rate
The single-GPU rate is an input: by default the rate this project measured for resnext50_32x4d
training on one H200 (Keras on JAX, bf16, batch 256, fused BN and block-diagonal groups: 5,650
and 5,633 images/s in two runs; benchmarks/results/h200_2026-11-26).
"""

import argparse

# ResNeXt-50 32x4d trainable parameters (docs/reference.md "Parameter counts and multiply-adds";
# torchvision publishes the same count).
PARAMS = 25_028_904
GRAD_BYTES = 4  # fp32 gradients
# ImageNet-1k train images and the original recipe's epochs (docs/reference.md "Recipes").
IMAGENET_TRAIN = 1_281_167
EPOCHS = 100
# Measured single-H200 training rate, bf16, batch 256 (median of the two runs' 5,650 and 5,633).
REFERENCE_GPU_RATE = 5640.0
REFERENCE_BATCH = 256


def allreduce_seconds(n, grad_bytes, bandwidth, latency):
    """Ring all-reduce time: 2(n-1)/n of the gradient bytes over the slowest edge, plus hops."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * grad_bytes / bandwidth + 2 * (n - 1) * latency


def scenario(name, n, bandwidth, latency, args):
    """One cluster: step times and images/s without and with compute/communication overlap."""
    grad_bytes = PARAMS * GRAD_BYTES
    compute = args.batch_per_gpu / args.gpu_images_per_sec
    comm = allreduce_seconds(n, grad_bytes, bandwidth, latency)
    rows = []
    for overlap, step in (("no", compute + comm), ("full", max(compute, comm))):
        rate = n * args.batch_per_gpu / step
        hours = args.epochs * IMAGENET_TRAIN / rate / 3600
        efficiency = rate / (n * args.gpu_images_per_sec)
        rows.append((name, n, comm * 1e3, overlap, step * 1e3, rate, efficiency, hours))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu_images_per_sec", type=float, default=REFERENCE_GPU_RATE)
    parser.add_argument("--batch_per_gpu", type=int, default=REFERENCE_BATCH)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument(
        "--nvlink_gbytes", type=float, default=300.0, help="effective NCCL ring bandwidth, GB/s"
    )
    parser.add_argument("--node_gbits", default="100,400", help="network per node, Gbit/s")
    parser.add_argument(
        "--network_efficiency", type=float, default=0.9, help="achieved share of line rate"
    )
    parser.add_argument("--nvlink_latency_us", type=float, default=5.0)
    parser.add_argument("--network_latency_us", type=float, default=10.0)
    parser.add_argument(
        "--pipeline_images_per_core",
        type=float,
        default=0.0,
        help="measured input pipeline images/s per CPU core; prints the cores a node needs",
    )
    args = parser.parse_args(argv)

    grad_mb = PARAMS * GRAD_BYTES / 1e6
    compute_ms = 1e3 * args.batch_per_gpu / args.gpu_images_per_sec
    print(
        f"single GPU: {args.gpu_images_per_sec:.0f} images/s at batch {args.batch_per_gpu} "
        f"(compute {compute_ms:.1f} ms/step); gradients {PARAMS:,} x {GRAD_BYTES} B = "
        f"{grad_mb:.1f} MB/step; {args.epochs} epochs x {IMAGENET_TRAIN:,} images"
    )
    rows = scenario(
        "8 GPUs, 1 node, NVLink", 8, args.nvlink_gbytes * 1e9, args.nvlink_latency_us * 1e-6, args
    )
    for gbits in (float(g) for g in args.node_gbits.split(",")):
        bandwidth = gbits / 8 * 1e9 * args.network_efficiency
        name = f"64 GPUs, 8 nodes, {gbits:.0f} Gb/s per node"
        rows += scenario(name, 64, bandwidth, args.network_latency_us * 1e-6, args)
    print(
        "| cluster | GPUs | all-reduce ms | overlap | step ms | images/s | scaling efficiency "
        "| 100 epochs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n, comm, overlap, step, rate, efficiency, hours in rows:
        print(
            f"| {name} | {n} | {comm:.1f} | {overlap} | {step:.1f} | {rate:,.0f} | "
            f"{efficiency:.0%} | {hours:.2f} h ({hours * 60:.0f} min) |"
        )
    if args.pipeline_images_per_core:
        node_rate = 8 * args.gpu_images_per_sec
        cores = node_rate / args.pipeline_images_per_core
        print(
            f"input pipeline: {node_rate:,.0f} images/s per 8-GPU node at "
            f"{args.pipeline_images_per_core:.0f} images/s per core needs {cores:.0f} CPU cores"
        )


if __name__ == "__main__":
    main()
