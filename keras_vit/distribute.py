"""Training keras_vit models on several devices with `model.fit`.

On the TensorFlow backend, tf.distribute strategies: `get_strategy("auto")`
picks TPUStrategy when a TPU is configured, MultiWorkerMirroredStrategy when
`TF_CONFIG` names several workers, MirroredStrategy with several GPUs, and
the default strategy otherwise. Keras 3's `model.fit` does not run under
MultiWorkerMirroredStrategy as released (keras-team/keras#20585);
`get_strategy` installs the narrow fix in `patch_keras_multi_worker`
whenever it returns that strategy.

On the JAX backend, Keras' own distribution API (`keras.distribution`):
`get_distribution("data_parallel")` replicates the model on every device
and splits each batch; `get_distribution("model_parallel", model_parallel=N)`
also shards every block's attention heads and MLP over N devices
(`layout_map`: the Megatron split, column-parallel query/key/value and
first MLP layer, row-parallel attention output and second MLP layer).
`get_strategy` accepts both names and returns them wrapped with the
strategy interface `keras_vit.runs.train` uses.

TensorFlow is imported when a tf.distribute strategy is asked for, so that
the JAX helpers work where TensorFlow is not installed.
"""

import contextlib
import functools
import json
import os

import keras

TF_STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
KERAS_DISTRIBUTIONS = ("data_parallel", "model_parallel")
STRATEGIES = ("auto",) + TF_STRATEGIES + KERAS_DISTRIBUTIONS


def _tf():
    from keras_vit._backend import require_tensorflow

    require_tensorflow("tf.distribute strategies")
    import tensorflow as tf

    return tf


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
    tf = _tf()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name="auto", model_parallel=2):
    """Returns the distribution strategy for `name`.

    Args:
        name: `"auto"`, or on the TensorFlow backend a tf.distribute
            strategy: `"default"`, `"one_device"` (the first GPU, else the
            CPU), `"mirrored"` (all local GPUs, or all logical CPU devices
            when there is no GPU), `"multi_worker"` (from `TF_CONFIG`) or
            `"tpu"`; on the JAX backend Keras' `"data_parallel"` or
            `"model_parallel"` (`get_distribution`, over all devices, two
            of them per model copy for `"model_parallel"`).
        model_parallel: devices per model copy for `"model_parallel"`
            (see `get_distribution`); ignored otherwise.
            `"auto"` picks as the module docstring says on TensorFlow;
            on JAX, `"data_parallel"` when there are several devices; on
            PyTorch, one device.

    Returns:
        An object with `scope()` and `num_replicas_in_sync`: a
        `tf.distribute.Strategy`, or a `KerasDistribution` for Keras'
        distribution API. Build and compile the model under `scope()`
        (and fit under it for a `KerasDistribution`). The batch size given
        to `keras_vit.data.load` is the global batch.

    Raises:
        ValueError: an unknown name, or one the backend cannot run.

    Example:

    >>> strategy = keras_vit.distribute.get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; received strategy={name!r}.")
    backend = keras.backend.backend()
    if name in KERAS_DISTRIBUTIONS:
        return KerasDistribution(get_distribution(name, model_parallel=model_parallel))
    if backend != "tensorflow":
        if name == "auto" and backend == "jax" and len(keras.distribution.list_devices()) > 1:
            return KerasDistribution(get_distribution("data_parallel"))
        if name in ("auto", "default"):
            return KerasDistribution(None)
        raise ValueError(
            f"strategy={name!r} is a tf.distribute strategy, which needs Keras' TensorFlow backend; "
            f"this is the {backend} backend: use "
            + ("'data_parallel' or 'model_parallel' (Keras' distribution API)" if backend == "jax"
               else "'default' (Keras' distribution API runs on JAX only)") + "."
        )
    tf = _tf()
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


def get_distribution(name="data_parallel", devices=None, model_parallel=2):
    """Returns a Keras distribution (`keras.distribution`) for a ViT.

    Keras' distribution API runs on the JAX backend. Use it as Keras says:
    `with distribution.scope():` around building, compiling and fitting
    the model, or `keras.distribution.set_distribution(distribution)`.

    Args:
        name: `"data_parallel"`: the model on every device, each batch split
            over them (`keras.distribution.DataParallel`);
            `"model_parallel"`: a `(batch, model)` device mesh, every
            block's attention heads and MLP units sharded over the `model`
            axis by `layout_map`, each batch split over the `batch` axis
            (`keras.distribution.ModelParallel`).
        devices: the devices to use (`keras.distribution.list_devices()`
            names); default: all of them.
        model_parallel: with `"model_parallel"`, how many devices share one
            copy of the model (the `model` axis). It must divide the number
            of devices, and the number of heads and the MLP width of the
            model (`check_layout(model, distribution)` says which).

    Returns:
        A `keras.distribution.DataParallel` or `ModelParallel`.

    Raises:
        ValueError: an unknown name, a backend other than JAX, or a
            `model_parallel` that does not divide the devices.

    Example:

    >>> distribution = keras_vit.distribute.get_distribution("data_parallel")  # doctest: +SKIP
    >>> with distribution.scope():  # doctest: +SKIP
    ...     model = keras_vit.ViT("Ti/16", classes=10)
    """
    if name not in KERAS_DISTRIBUTIONS:
        raise ValueError(f"name must be one of {', '.join(KERAS_DISTRIBUTIONS)}; received name={name!r}.")
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"{name!r} is Keras' distribution API, which runs on the JAX backend (KERAS_BACKEND=jax); "
            f"this is the {backend} backend"
            + (": use a tf.distribute strategy such as 'mirrored'." if backend == "tensorflow" else ".")
        )
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if name == "data_parallel":
        return keras.distribution.DataParallel(devices=devices)
    if isinstance(model_parallel, bool) or not isinstance(model_parallel, int) or model_parallel < 1 \
            or len(devices) % model_parallel:
        raise ValueError(
            f"model_parallel must be a positive integer dividing the number of devices ({len(devices)}); "
            f"received model_parallel={model_parallel!r}."
        )
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // model_parallel, model_parallel), axis_names=("batch", "model"), devices=devices
    )
    return keras.distribution.ModelParallel(layout_map=layout_map(mesh), batch_dim_name="batch")


def layout_map(device_mesh, model_axis="model"):
    """The `keras.distribution.LayoutMap` that shards a keras_vit ViT over
    `device_mesh`'s `model_axis`, as Megatron-LM splits a Transformer.

    Query, key and value projections are split by attention head and the
    first MLP layer by unit (column-parallel); the attention output and the
    second MLP layer are split along their inputs (row-parallel), so each
    block needs one all-reduce after attention and one after the MLP.
    Everything else (patch embedding, class token, position embedding,
    LayerNorms, head) is replicated: at ViT sizes they are a few percent of
    the weights.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with an axis named
            `model_axis`.
        model_axis: the mesh axis to shard over.

    Returns:
        A `keras.distribution.LayoutMap`, keyed by regular expressions of
        the variable paths (`block_N/attn/query/kernel`, ...).
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(f"device_mesh has axes {tuple(device_mesh.axis_names)}; received model_axis={model_axis!r}.")
    layouts = keras.distribution.LayoutMap(device_mesh)
    # Kernels of the EinsumDense projections: (width, heads, head_dim) for
    # query/key/value, (heads, head_dim, width) for the output.
    layouts[r"block_\d+/attn/(query|key|value)/kernel"] = (None, model_axis, None)
    layouts[r"block_\d+/attn/(query|key|value)/bias"] = (model_axis, None)
    layouts[r"block_\d+/attn/attention_output/kernel"] = (model_axis, None, None)
    layouts[r"block_\d+/mlp_fc1/kernel"] = (None, model_axis)
    layouts[r"block_\d+/mlp_fc1/bias"] = (model_axis,)
    layouts[r"block_\d+/mlp_fc2/kernel"] = (model_axis, None)
    return layouts


def check_layout(model, distribution):
    """Raises ValueError when `distribution` (a `ModelParallel` from
    `get_distribution`) cannot shard `model`: its heads or MLP width not a
    multiple of the `model` axis. Data-parallel distributions always fit."""
    if not isinstance(distribution, keras.distribution.ModelParallel):
        return
    mesh = distribution.device_mesh
    shards = mesh.shape[list(mesh.axis_names).index("model")] if "model" in mesh.axis_names else 1
    for layer in model.layers:
        heads = getattr(layer, "num_heads", None)
        mlp_dim = getattr(layer, "mlp_dim", None)
        if heads is None or mlp_dim is None:
            continue
        if heads % shards or mlp_dim % shards:
            raise ValueError(
                f"model_parallel={shards} must divide the number of heads ({heads}) and the MLP width "
                f"({mlp_dim}) of {layer.name}."
            )


def pad_batches(dataset, multiple):
    """`dataset` of `(images, labels)` batches as `(images, labels,
    weights)`, every batch padded to a multiple of `multiple` rows with
    zero-weight rows (weight 1 elsewhere).

    Keras' distribution API splits every batch evenly over the devices and
    fails on a last batch that does not divide (keras-team/keras#21167);
    evaluation must not drop it. The padded rows count for nothing in the
    accuracy; the mean loss Keras reports is divided by the padded batch
    sizes, so it is low by at most `multiple - 1` rows' share of the data
    set (one row in 180 for the digits' validation split on 2 devices).
    A `keras_vit.data.ArrayBatches` pads itself (`padded`).
    """
    if hasattr(dataset, "padded"):
        return dataset.padded(multiple)
    tf = _tf()

    def pad(images, labels):
        rows = tf.shape(images)[0]
        missing = (-rows) % multiple

        def padded(tensor):
            zeros = tf.zeros(tf.concat([[missing], tf.shape(tensor)[1:]], 0), tensor.dtype)
            return tf.concat([tensor, zeros], 0)

        weights = tf.concat([tf.ones([rows]), tf.zeros([missing])], 0)
        return padded(images), padded(labels), weights

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class KerasDistribution:
    """A Keras distribution (or none) with the interface of a
    `tf.distribute.Strategy` that `keras_vit.runs.train` uses: `scope()`
    and `num_replicas_in_sync` (the size of the batch axis).

    Attributes:
        distribution: the `keras.distribution.Distribution`, or None for
            one device.
    """

    def __init__(self, distribution):
        self.distribution = distribution

    def scope(self):
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()

    @property
    def num_replicas_in_sync(self):
        if self.distribution is None:
            return 1
        mesh = self.distribution.device_mesh
        return int(mesh.shape[list(mesh.axis_names).index(self.distribution.batch_dim_name)])

    def __repr__(self):
        return f"KerasDistribution({self.distribution!r})"


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
    tf = _tf()
    gathered = strategy.gather(strategy.run(lambda: tf.constant([values], tf.int64)), axis=0)
    per_worker = max(1, strategy.num_replicas_in_sync // max(1, _tf_config_workers()))
    return [tuple(int(v) for v in row) for row in gathered.numpy()[::per_worker]]


def _is_multi_worker(strategy):
    if isinstance(strategy, KerasDistribution) or keras.backend.backend() != "tensorflow":
        return False
    tf = _tf()
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
    tf = _tf()
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
