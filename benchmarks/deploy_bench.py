"""Times an exported model in its own runtime, as `benchmarks.model_bench` times the Keras model.

    python -m resnext_tf.export --model=resnext50_32x4d --weights=r50.weights.h5 \
        --export_dir=/tmp/exports --model_name=r50_ov --format=openvino
    python -m benchmarks.deploy_bench --path=/tmp/exports/r50_ov/1 --batch_size=16 \
        --latency_calls=50 [--precision=f32]

The format, dtype and precision (float32, bfloat16 or int8) are read from the export's
export_info.json. Throughput runs batches of --batch_size synthetic float32 images (the
float-input contract, INT8 exports included; the SavedModel's predict_images signature, which
also computes the softmax and the top-k); --latency_calls times that many batch-1 calls one at
a time (p50, p99). Runtimes: TensorFlow
(tf.saved_model.load), ONNX Runtime (CPU provider), OpenVINO (CPU plugin, synchronous calls,
INFERENCE_PRECISION_HINT from export_info.json unless --precision), LiteRT (XNNPACK, --threads).
The timing and the JSON line are `benchmarks.model_bench`'s (benchmarks/timing.py, which imports
no Keras), so rows compare with benchmarks.compare's others.
"""

import argparse
import json
import os

import numpy as np

from benchmarks import timing


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True, help="version directory of an export")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--latency_calls", type=int, default=0, help="batch-1 calls timed")
    parser.add_argument("--precision", help="OpenVINO INFERENCE_PRECISION_HINT (f32, bf16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="LiteRT threads")
    return parser.parse_args(argv)


# The runners are this process's own, not resnext_tf.export.runtimes (which predict uses):
# importing resnext_tf loads Keras and TensorFlow, which would sit in every timed runtime's
# memory and threads.


def saved_model_runner(path, args):
    import tensorflow as tf

    signature = tf.saved_model.load(path).signatures["predict_images"]
    return lambda images: signature(images=tf.constant(images))["logits"].numpy()


def onnx_runner(path, args):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.path.join(path, "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return lambda images: session.run(["logits"], {"images": images})[0]


def openvino_runner(path, args, info):
    import openvino

    config = dict(info["openvino_plugin_config"])
    if args.precision:
        config["INFERENCE_PRECISION_HINT"] = args.precision
    compiled = openvino.Core().compile_model(os.path.join(path, "model.xml"), "CPU", config)
    request = compiled.create_infer_request()
    info["hint"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return lambda images: request.infer({"images": images})["logits"]


def litert_runner(path, args):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(os.path.join(path, "model.tflite"), num_threads=args.threads)
    (inputs,) = interpreter.get_input_details()
    (outputs,) = interpreter.get_output_details()
    shape = [None]

    def run(images):
        if shape[0] != images.shape:
            interpreter.resize_tensor_input(inputs["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(inputs["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(outputs["index"])

    return run


def main(argv=None):
    args = parse_args(argv)
    with open(os.path.join(args.path, "export_info.json"), encoding="utf-8") as f:
        info = json.load(f)
    fmt = info["format"]
    if fmt == "openvino":
        run = openvino_runner(args.path, args, info)
    else:
        runners = {"saved_model": saved_model_runner, "onnx": onnx_runner, "litert": litert_runner}
        run = runners[fmt](args.path, args)
    size = info["input"]["shape"][1:]
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((args.batch_size, *size)).astype(np.float32)
    one = batch[:1].copy()
    warmup_s, seconds, cpu_seconds = timing.time_windows(
        lambda: run(batch), lambda out: out, args.steps, args.windows, args.warmup
    )
    latency = {}
    if args.latency_calls:
        latency = timing.latency_percentiles(
            lambda: run(one), lambda out: out, args.latency_calls, max(args.warmup, 3)
        )
    # An INT8 export is "int8"; OpenVINO's float IR computes in the precision it compiled for.
    dtype = info.get("precision", info["dtype"])
    if dtype != "int8":
        dtype = info.get("hint", dtype)
    timing.emit(
        {
            "framework": f"export/{fmt}",
            "variant": f"{fmt} {dtype}",
            "model": os.path.basename(os.path.dirname(os.path.abspath(args.path))),
            "mode": "infer",
            "batch_size": args.batch_size,
            "image_size": size[0],
            "dtype": dtype,
            "data": "synthetic",
            **timing.throughput(args.batch_size, args.steps, seconds, cpu_seconds),
            "warmup_s": round(warmup_s, 1),
            "peak_rss_mb": timing.peak_host_memory_mb(),
            "load_avg": timing.machine_load(),
            **latency,
        }
    )


if __name__ == "__main__":
    main()
