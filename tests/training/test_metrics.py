"""Batch statistics (padding masked) and the error figures derived from them."""

import numpy as np

from resnext_tf.training import metrics

LOGITS = np.array(
    [
        [3.0, 1.0, 0.0, -1.0, -2.0, -3.0],  # label 0: top-1 hit
        [3.0, 1.0, 0.0, -1.0, -2.0, -3.0],  # label 4: top-5 hit only
        [3.0, 1.0, 0.0, -1.0, -2.0, -3.0],  # label 5: miss
        [0.0, 0.0, 9.0, 0.0, 0.0, 0.0],  # padding (label -1): ignored
    ],
    np.float32,
)
LABELS = np.array([0, 4, 5, -1], np.int32)


def test_batch_stats_masks_padding():
    stats = metrics.batch_stats(LOGITS, LABELS).numpy()
    log_z = np.log(np.exp(LOGITS[0].astype(np.float64)).sum())
    loss = sum(log_z - LOGITS[0, label] for label in (0, 4, 5))
    np.testing.assert_allclose(stats, [loss, 1.0, 2.0, 3.0], rtol=1e-6)


def test_errors_in_percent():
    errors = metrics.Errors.from_sums([6.0, 1.0, 2.0, 4.0])
    assert (errors.loss, errors.top1, errors.top5, errors.count) == (1.5, 75.0, 50.0, 4)


def test_top5_is_top_k_with_fewer_classes():
    stats = metrics.batch_stats(np.eye(3, dtype=np.float32), np.array([2, 2, 2])).numpy()
    assert stats[metrics.TOP1] == 1.0 and stats[metrics.TOP5] == 3.0


def test_empty_sums_are_nan():
    assert np.isnan(metrics.Errors.from_sums([0.0, 0.0, 0.0, 0.0]).top1)
