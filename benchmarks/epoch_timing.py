"""Epoch throughput timing shared by the input-pipeline benchmarks (no framework imports, so
the torch side does not load TensorFlow and vice versa)."""

import time


def images_per_second(make_epoch, epochs):
    """Iterates `epochs` epochs of (images, labels) batches; times all but each epoch's first.

    Args:
      make_epoch: epoch number -> an iterable of (images, labels) batches.
      epochs: how many epochs to run.

    Returns:
      Images per second over the timed batches. The first batch of an epoch is left out:
      pipeline start-up (tracing, thread pools, worker processes) is not throughput.
    """
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        iterator = iter(make_epoch(epoch))
        next(iterator)
        start = time.perf_counter()
        for batch, _ in iterator:
            images += batch.shape[0]
        seconds += time.perf_counter() - start
    return images / seconds
