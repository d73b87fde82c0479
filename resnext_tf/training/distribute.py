"""tf.distribute strategy selection and worker roles."""

import json
import os
import warnings

import tensorflow as tf

from resnext_tf.errors import check_choice
from resnext_tf.training import cluster
from resnext_tf.training.config import STRATEGIES


def _tf_config_workers():
    """Number of workers (chief included) declared in TF_CONFIG."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def resolve_strategy_name(name, num_gpus=-1):
    """Turns "auto" into a concrete strategy name.

    "auto" is multi_worker_mirrored when TF_CONFIG lists more than one worker, mirrored when more
    than one GPU is used, one_device otherwise.
    """
    check_choice("distribution_strategy", name, STRATEGIES)
    if name != "auto":
        return name
    if _tf_config_workers() > 1:
        return "multi_worker_mirrored"
    return "mirrored" if len(_gpus(num_gpus)) > 1 else "one_device"


def _gpus(num_gpus):
    gpus = [f"/gpu:{i}" for i in range(len(tf.config.list_logical_devices("GPU")))]
    if num_gpus > len(gpus):
        raise ValueError(
            f"num_gpus exceeds the visible GPUs; received num_gpus={num_gpus!r}; expected at "
            f"most {len(gpus)} (or -1 for all)."
        )
    return gpus if num_gpus < 0 else gpus[:num_gpus]


def _tpu_strategy(tpu):
    # "local" addresses the TPU of a TPU VM; otherwise a name or grpc:// address of a TPU node.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def build_strategy(
    name="auto", num_gpus=-1, tpu=None, devices=None, worker_timeout=60, model_dir=None
):
    """Creates the tf.distribute strategy of a run.

    Args:
        name: one of config.STRATEGIES. "off" is TensorFlow's default (no-op) strategy.
        num_gpus: GPUs used by one_device / mirrored; -1 means all visible ones, 0 the CPU.
        tpu: TPU name or address for "tpu" ("local" on a TPU VM).
        devices: explicit device list for "mirrored" (e.g. logical CPU devices in tests);
            overrides num_gpus.
        worker_timeout: multi_worker_mirrored with several TF_CONFIG workers: seconds within
            which a lost or unreachable worker stops the others (cluster.connect).
        model_dir: the run folder a lost-worker report names the last checkpoint of.

    Returns:
        A tf.distribute.Strategy.

    Raises:
        ValueError: for an unknown name, too many GPUs or "tpu" without an address.
        WorkerLostError: when a worker does not join within `worker_timeout` seconds.
    """
    name = resolve_strategy_name(name, num_gpus)
    if name == "off":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = _gpus(num_gpus)
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    if name == "mirrored":
        # With no GPU, mirror over the logical CPU devices the process configured.
        devices = (
            devices or _gpus(num_gpus) or [d.name for d in tf.config.list_logical_devices("CPU")]
        )
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        return cluster.connect(worker_timeout, model_dir)
    if not tpu:
        raise ValueError(
            f"distribution_strategy='tpu' needs a TPU address; received tpu={tpu!r}; expected "
            "'local' (TPU VM), a TPU name or a grpc:// address."
        )
    return _tpu_strategy(tpu)


def is_chief(strategy):
    """Whether this process writes checkpoints, logs and exports.

    The chief is task "chief", or worker 0 when the cluster has no chief; single-worker
    strategies are always chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def check_batch_size(global_batch_size, strategy):
    """Raises when the global batch does not split evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch must be divisible by the number of replicas; received "
            f"batch_size={global_batch_size!r} with {replicas} replicas; expected a multiple "
            f"of {replicas}."
        )


def is_multi_worker(strategy):
    """Whether several processes (TF_CONFIG workers) train together under `strategy`."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("chief", [])) + len(spec.get("worker", [])) > 1


def make_deterministic():
    """Deterministic kernels plus one inter-op thread.

    With several inter-op threads, the CPU results of a training step differ in the last bits
    from run to run even with op determinism on (measured with TF 2.21 on the CIFAR models);
    running independent ops one at a time makes them bit-reproducible for about 20% more step
    time. Meant for single-device runs: replicas of one process need concurrent collectives.
    """
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # The runtime already started (e.g. in a notebook); the setting can no longer change.
        if tf.config.threading.get_inter_op_parallelism_threads() != 1:
            warnings.warn(
                "deterministic=True could not limit TensorFlow to one inter-op thread because "
                "the runtime is already initialised; results may differ in the last bits.",
                stacklevel=3,
            )
