"""The models predict runs: a Keras model with its data contract, an exported SavedModel, or
an ONNX, OpenVINO or LiteRT export with the contract of its export_info.json.

A predictor turns a file's bytes into its model input (`prepare`) and a batch of inputs into
each image's top-k `Prediction`s (`predict`); an image it cannot use is a `SkippedImage`.
"""

import abc

import numpy as np
import tensorflow as tf

from resnext_tf import export
from resnext_tf.contract import DataContract
from resnext_tf.data import evaluation
from resnext_tf.errors import UserError
from resnext_tf.export import runtimes
from resnext_tf.predict.output import Prediction


class SkippedImage(Exception):
    """An image that cannot be read or decoded; the message says why, on one line."""


def tf_reason(error):
    """The decoder's own message in a TensorFlow error, without the graph and node details."""
    message = (getattr(error, "message", None) or str(error)).split("\n\t [[")[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[-1].split(" [Op:")[0] if lines else type(error).__name__
    # A failed tf.debugging.Assert prints its message as "assertion failed: [message]".
    wrapped = "assertion failed: ["
    if reason.startswith(wrapped) and reason.endswith("]"):
        reason = reason[len(wrapped) : -1]
    return reason


def top_predictions(probabilities, contract, top_k):
    """The top-k Predictions of one probability vector, named by the data contract."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    rows = []
    for rank, i in enumerate(order, 1):
        wnid = contract.wnids[i] if contract.wnids else None
        label = contract.labels[i] if contract.labels else (wnid or str(int(i)))
        rows.append(Prediction(rank, int(i), wnid, label, float(probabilities[i])))
    return rows


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


class ArrayPredictor(abc.ABC):
    """The shared part of the predictors that run a model on transformed images: the data
    contract's evaluation transform of each file (`prepare`), then top-k rows of the softmax of
    `logits(batch)` (`predict`; with ten crops, of the mean logits of each image's crops)."""

    def __init__(self, contract, top_k, ten_crop=False, limits=None):
        try:
            transform = evaluation.eval_transform(contract, limits, ten_crop)
        except ValueError as e:  # ten crops are an ImageNet evaluation
            raise UserError(f"--ten_crop: {e}") from e
        self._transform = tf.function(
            transform, input_signature=[tf.TensorSpec([], tf.string)], reduce_retracing=True
        )
        self.contract = contract
        self.top_k = top_k
        self.ten_crop = ten_crop

    @abc.abstractmethod
    def logits(self, batch):
        """float32 logits [N, classes] of transformed images [N, H, W, 3]."""

    def prepare(self, data):
        """The transformed image ([H, W, 3], or [10, H, W, 3] with ten crops)."""
        try:
            return self._transform(data).numpy()
        except tf.errors.OpError as e:
            raise SkippedImage(f"not a decodable image: {tf_reason(e)}") from e

    def predict(self, items):
        """Lists of top-k Predictions, one per item, in order."""
        batch = np.stack(items)
        if self.ten_crop:
            crops = batch.shape[1]
            logits = self.logits(batch.reshape(-1, *batch.shape[2:]))
            logits = evaluation.combine_crops(np.reshape(logits, (len(items), crops, -1)))
        else:
            logits = self.logits(batch)
        probabilities = softmax(logits)
        return [top_predictions(p, self.contract, self.top_k) for p in probabilities]


class KerasPredictor(ArrayPredictor):
    """A Keras classifier (logits) with its data contract's evaluation transform, run as
    `export.serving_model` serves it, so predict and serving compute alike."""

    def __init__(self, model, contract, top_k, ten_crop=False, limits=None):
        channels = model.input_shape[-1]
        if channels != 3:
            raise UserError(
                f"predict decodes images to RGB; received a model with {channels} input "
                "channels. Call the model on your own arrays instead."
            )
        super().__init__(contract, top_k, ten_crop, limits)
        self.model = export.serving_model(model)

    def logits(self, batch):
        return self.model.predict_on_batch(batch)


class ExportPredictor(ArrayPredictor):
    """An ONNX, OpenVINO or LiteRT export (float32 or INT8) in its own runtime
    (`export.runtimes`), with the transform and class names of its export_info.json."""

    def __init__(self, exported, top_k, ten_crop=False, limits=None, labels=None):
        try:
            contract = DataContract.from_json((exported.info or {}).get("contract"))
            classes = int(exported.info["output"]["shape"][-1])
            self._run = runtimes.runtime(exported)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            # export_info.json is outside input: a missing or ill-typed record is named, once.
            what = f"export_info.json lacks {e}" if isinstance(e, KeyError) else e
            raise UserError(f"Cannot run the export {exported.path}: {what}") from e
        except ImportError as e:
            raise UserError(f"Cannot run the {exported.fmt} export {exported.path}: {e}") from e
        if labels is not None:
            if len(labels) != classes:
                raise UserError(f"--labels names {len(labels)} classes; the export has {classes}.")
            contract = contract.with_labels(labels)
        super().__init__(contract, top_k, ten_crop, limits)
        self.fmt = exported.fmt

    def logits(self, batch):
        return self._run(batch)


class SavedModelPredictor:
    """An exported SavedModel through its serving_default signature (encoded bytes in)."""

    def __init__(self, path, top_k):
        try:
            loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise UserError(f"Cannot load --saved_model={path!r}: {tf_reason(e)}") from e
        if export.SERVING_SIGNATURE not in loaded.signatures:
            raise UserError(
                f"{path} has no {export.SERVING_SIGNATURE!r} signature; received signatures "
                f"{sorted(loaded.signatures)}. Export it with python -m resnext_tf.export."
            )
        self._loaded = loaded  # the signature needs its object kept alive
        self._serve = loaded.signatures[export.SERVING_SIGNATURE]
        self.top_k = top_k

    def prepare(self, data):
        return data

    def _call(self, items):
        outputs = self._serve(**{export.BYTES_INPUT: tf.constant(items)})
        return {k: v.numpy() for k, v in outputs.items()}

    def predict(self, items):
        """Lists of top-k Predictions; an image the signature rejects gives a SkippedImage."""
        try:
            return self._rows(self._call(items))
        except tf.errors.InvalidArgumentError as e:
            if len(items) == 1:
                return [_skipped_by_signature(e)]
        # An image of the batch failed the whole request: find it, and keep the others.
        results = []
        for item in items:
            try:
                results += self._rows(self._call([item]))
            except tf.errors.InvalidArgumentError as e:
                results.append(_skipped_by_signature(e))
        return results

    def _rows(self, outputs):
        classes, scores = outputs["classes"], outputs["scores"]
        if self.top_k > classes.shape[1]:
            raise UserError(
                f"The SavedModel returns its top {classes.shape[1]} classes; received "
                f"--top_k={self.top_k}. Export it with a larger --top_k."
            )

        def text(key, i, j):
            return outputs[key][i, j].decode("utf-8") if key in outputs else None

        rows = []
        for i in range(classes.shape[0]):
            row = []
            for j in range(self.top_k):
                index, wnid = int(classes[i, j]), text("wnids", i, j)
                label = text("labels", i, j) or wnid or str(index)
                row.append(Prediction(j + 1, index, wnid, label, float(scores[i, j])))
            rows.append(row)
        return rows


def _skipped_by_signature(error):
    # The serving signature names a failed image by its index in the request.
    reason = tf_reason(error).removeprefix("image 0: ")
    return SkippedImage(f"not a decodable image: {reason}")
