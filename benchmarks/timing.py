"""Timing and reporting shared by `benchmarks.model_bench` and the scripts that time the other
side (torchvision_bench.py, torch_input_pipeline.py, deploy_bench.py), so every row of a
comparison is measured and printed the same way.

The standard library and numpy only, and no imports from resnext_tf (the `benchmarks` package
imports nothing either), so the processes that time other frameworks import neither Keras nor
TensorFlow.
"""

import json
import os
import resource
import statistics
import sys
import time

import numpy as np

MODES = ("train", "infer")
# Marks the machine-readable result line (the line benchmarks/compare.py parses).
JSON_PREFIX = "BENCHMARK_JSON "


def time_windows(step, sync, steps, windows, warmup):
    """Times `windows` windows of `steps` calls of `step` after `warmup` untimed calls.

    Args:
      step: Runs one step and returns something `sync` can wait for.
      sync: Blocks until the work behind a `step` result is done (asynchronous backends).
      steps: Calls per window.
      windows: Number of windows.
      warmup: Untimed calls first.

    Returns:
      (warm-up seconds, list of window wall-clock seconds, CPU seconds of this process over all
      windows).
    """
    start = time.perf_counter()
    for _ in range(warmup):
        out = step()
    if warmup:
        sync(out)
    warmup_s = time.perf_counter() - start
    seconds = []
    cpu_start = time.process_time()
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        sync(out)
        seconds.append(time.perf_counter() - start)
    return warmup_s, seconds, time.process_time() - cpu_start


def throughput(batch_size, steps, seconds, cpu_seconds):
    """Images/s of each window summarised (median, min, max), the median step time, and images
    per CPU-second of this process (less sensitive to other load on a shared machine, though
    threads that spin while waiting inflate it)."""
    rates = [batch_size * steps / s for s in seconds]
    return {
        "images_per_sec": round(statistics.median(rates), 2),
        "images_per_sec_min": round(min(rates), 2),
        "images_per_sec_max": round(max(rates), 2),
        "step_ms": round(1e3 * statistics.median(seconds) / steps, 1),
        "images_per_cpu_sec": round(batch_size * steps * len(seconds) / cpu_seconds, 2),
    }


def latency_percentiles(step, sync, calls, warmup):
    """Milliseconds per call of `step` (each call synced on its own) after `warmup` calls:
    {"p50_ms", "p99_ms", "latency_calls"}. p99 of fewer than 100 calls is the slowest call
    or close to it (numpy's linear interpolation)."""
    for _ in range(warmup):
        sync(step())
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        sync(step())
        times.append(1e3 * (time.perf_counter() - start))
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "latency_calls": calls,
    }


def peak_host_memory_mb():
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def emit(result):
    """Prints a result as one human line and one JSON line (the line compare.py parses)."""
    print(
        f"{result['framework']} {result['model']} {result['mode']} bs{result['batch_size']} "
        f"{result['image_size']}px {result['dtype']} [{result['variant']}]: "
        f"{result['images_per_sec']} img/s (min {result['images_per_sec_min']}, max "
        f"{result['images_per_sec_max']}), peak RSS {result['peak_rss_mb']} MB"
        + (f", device peak {result['device_peak_mb']} MB" if result.get("device_peak_mb") else "")
    )
    if result.get("p50_ms") is not None:
        print(f"batch 1 latency: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    print(JSON_PREFIX + json.dumps(result), flush=True)


def machine_load():
    """One-minute load average, recorded so a result from a busy machine can be spotted."""
    return round(os.getloadavg()[0], 2)
