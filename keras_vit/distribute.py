"""tf.distribute strategies for training keras_vit models with `model.fit`.

`get_strategy("auto")` picks TPUStrategy when a TPU is configured,
MultiWorkerMirroredStrategy when `TF_CONFIG` names several workers,
MirroredStrategy with several GPUs, and the default strategy otherwise.

Keras 3's `model.fit` does not run under MultiWorkerMirroredStrategy as
released (keras-team/keras#20585); `get_strategy` installs the narrow fix in
`patch_keras_multi_worker` whenever it returns that strategy.
"""

import functools
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")


def _tf_config():
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error


def _tf_config_workers():
    cluster = _tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_configured():
    # Only look for a TPU where one is configured: the resolver's own search
    # queries a cloud metadata server, which hangs on machines without one.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")) or os.path.exists(
        "/dev/accel0"
    )


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` for `name`.

    Args:
        name: `"auto"`, `"default"`, `"one_device"` (the first GPU, else the
            CPU), `"mirrored"` (all local GPUs, or all logical CPU devices
            when there is no GPU), `"multi_worker"` (from `TF_CONFIG`) or
            `"tpu"`.

    Returns:
        A strategy; build and compile the model under `strategy.scope()`.
        The batch size given to `keras_vit.data.load` is the global batch.

    Example:

    >>> strategy = keras_vit.distribute.get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; received strategy={name!r}.")
    if name == "auto":
        if _tpu_configured():
            name = "tpu"
        elif _tf_config_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if _tf_config_workers() < 1:
            raise ValueError("strategy='multi_worker' needs TF_CONFIG naming the cluster's workers.")
        patch_keras_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy()


def is_chief(strategy=None):
    """Whether this process writes the run's files (checkpoints, logs, plots).

    Under MultiWorkerMirroredStrategy only the chief (the `chief` task, or
    worker 0 when there is none) writes; every process is chief otherwise.
    """
    config = _tf_config()
    if not config.get("task") or _tf_config_workers() <= 1:
        return True
    task_type, index = task()
    if "chief" in config.get("cluster", {}):
        return task_type == "chief"
    return task_type == "worker" and index == 0


def task():
    """This process's task in `TF_CONFIG` as `(type, index)`: `("worker", 0)`
    where there is none (a single process)."""
    task = _tf_config().get("task", {})
    if not task:
        return "worker", 0
    return task.get("type"), int(task.get("index", 0))


def worker_values(strategy, *values):
    """`values` (ints) as each worker of `strategy` has them, in task order.

    Returns a list with one tuple of the values per worker. Under
    MultiWorkerMirroredStrategy every worker must call this at the same point
    (it is a collective all-gather); under any other strategy there is one
    process and the result is `[values]`. `keras_vit.runs.train` uses it to
    check, before training, that every worker resumes from the same backup.
    """
    values = tuple(int(v) for v in values)
    if not _is_multi_worker(strategy):
        return [values]
    gathered = strategy.gather(strategy.run(lambda: tf.constant([values], tf.int64)), axis=0)
    per_worker = max(1, strategy.num_replicas_in_sync // max(1, _tf_config_workers()))
    return [tuple(int(v) for v in row) for row in gathered.numpy()[::per_worker]]


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()
    )


@functools.cache
def patch_keras_multi_worker():
    """Makes Keras 3's `model.fit` run under MultiWorkerMirroredStrategy.

    keras-team/keras#20585: (1) `_maybe_symbolic_build` calls
    `strategy.reduce("MEAN", batch, axis=None)` eagerly on the first
    `PerReplica` input batch, which MultiWorkerMirroredStrategy cannot do
    outside a `tf.function` ("Attempt to convert a value (PerReplica...) to a
    Tensor"); the symbolic build only needs the batch's shapes, so this takes
    the first local replica's batch instead. (2) `reduce_per_replica` reduces
    the step's scalar metrics with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on rank-0 values; scalars are reduced with `axis=None`.
    Both changes apply only under MultiWorkerMirroredStrategy in
    multi-worker mode; every other strategy runs Keras' code unchanged.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not _is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v,
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            def _reduce(v):
                rank = strategy.experimental_local_results(v)[0].shape.rank
                axis = 0 if rank else None
                return strategy.reduce("MEAN", v, axis=axis)
            return tf.nest.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    return True
