"""Model copies for inference: test-time augmentation, dtype policies, and
the CPU feature test that decides whether bfloat16 is worth using.

Each function takes any `keras.Model` and returns a model (or the model
itself), so `evaluate`, `predict`, exports and the CLI apply them in the
same way.
"""

import contextlib
import gc
import threading
import warnings

import keras

from keras_vit import layers as vit_layers
from keras_vit import models
from keras_vit import _backend, backend
from keras_vit._validation import check_choice


_COLLECT_LOCK = threading.RLock()


@contextlib.contextmanager
def collect_garbage_once():
    """Within this context, Keras' per-variable garbage collections are
    skipped; one collection runs when it ends, if any was skipped (loading
    a float model asks for none, and gets none).

    Keras' `Layer.__delattr__` runs a full `gc.collect()` for every variable
    it removes, and `quantize("int8")` removes the float kernel of every
    `Dense` and `EinsumDense` (as does loading a quantized `.keras` file):
    for ViT-B/16 that is 74 full collections, whose cost grows with every
    object the process holds. Quantizing ViT-B/16 took 20.9 s and loading
    it as int8 20.4 s on an AMD EPYC (Zen 2, 2 cores); with one collection
    at the end, which frees the same float kernels, 2.2 s and 2.8 s. Keras
    has no switch for it, hence this context, which `with_precision` and
    `keras_vit.load_model` use. `gc.collect` is swapped under a lock, so
    that two threads never leave it swapped.
    """
    with _COLLECT_LOCK:
        collect = gc.collect
        outermost = collect is not _no_collection
        if outermost:
            _skipped[0] = 0
        gc.collect = _no_collection
        try:
            yield
        finally:
            gc.collect = collect
            if outermost and _skipped[0]:
                collect()


_skipped = [0]  # collections asked for within the outermost context


def _no_collection(generation=2):
    _skipped[0] += 1
    return 0


def bfloat16_cpu():
    """Whether `mixed_bfloat16` should run faster than float32 on this CPU.

    True when `/proc/cpuinfo` lists `amx_bf16` (Intel Sapphire Rapids and
    later with AMX enabled), or `avx512_bf16` on an AMD CPU (Zen 4 and
    later, whose bfloat16 dot products run at twice the float32 rate).
    False elsewhere, including Intel CPUs whose only bfloat16 instructions
    are AVX-512-BF16: their bfloat16 dot product runs at the float32 rate,
    so the conversions make the model slower (BENCHMARKS.md has the
    measurements). False where the file does not exist (macOS, Windows).
    """
    vendor, flags = _backend.cpu_features()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")


def _set_policy(model, policy, only=None):
    """Sets `policy` on every layer of `model` but its output layers (or on
    those of the types `only`), in place; returns `model`.

    A layer whose policy stores variables in another dtype (`"bfloat16"`
    after `"mixed_bfloat16"`, `"float32"` after `"bfloat16"`) gets its
    variables converted (`_convert_variables`), so that it holds what a
    layer built under the new policy would hold.
    """
    outputs = {id(tensor._keras_history.operation) for tensor in model.outputs}
    # Setting each layer's policy (a Keras 3 property) instead of editing the
    # nested configs: it reaches the sub-layers that blocks create themselves.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) in outputs or (only is not None and not isinstance(layer, only)):
            continue
        old = layer.dtype_policy.variable_dtype
        layer.dtype_policy = policy
        if layer.quantization_mode is None and layer.dtype_policy.variable_dtype != old:
            _convert_variables(layer, old, layer.dtype_policy.variable_dtype)
    # Functions Keras traced before compute at the old policy.
    model.predict_function = model.test_function = model.train_function = None
    return model


def _convert_variables(layer, old, dtype):
    """Replaces `layer`'s own variables of dtype `old` by copies in `dtype`,
    in place: same paths, same order in the layer's lists (which `.keras`
    files and `get_weights` follow), same attributes.

    By hand because Keras has no public way to change a built layer's
    variable dtype; it follows what Keras' own `quantize()` does to a
    `Dense` (untrack the float kernel, track the new variables), but keeps
    each variable's place in the layer's lists.
    """
    from keras.src.utils import tracking  # Keras' own switch for untracked assignment

    variables = [v for v in layer._trainable_variables + layer._non_trainable_variables
                 if keras.backend.standardize_dtype(v.dtype) == old]
    if not variables:
        return
    attributes = {id(value): name for name, value in vars(layer).items()
                  if isinstance(value, keras.Variable)}
    locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        for variable in variables:
            with keras.name_scope(layer.name, caller=layer):
                new = keras.Variable(
                    initializer=keras.ops.cast(variable.value, dtype), dtype=dtype,
                    trainable=variable.trainable, autocast=getattr(variable, "_autocast", True),
                    name=variable.name, aggregation=variable.aggregation, synchronization=variable.synchronization,
                )
            if new.path != variable.path:  # a layer that was never built in a model
                new._path = variable.path
            for attribute in ("regularizer", "constraint"):
                if getattr(variable, attribute, None) is not None:
                    setattr(new, attribute, getattr(variable, attribute))
            store = "trainable_variables" if variable.trainable else "non_trainable_variables"
            values = layer._tracker.config[store][1]
            # By identity: `list.index` would compare variables with `==`.
            values[next(i for i, v in enumerate(values) if v is variable)] = new
            layer._tracker.stored_ids[store].discard(id(variable))
            layer._tracker.stored_ids[store].add(id(new))
            layer._post_untrack_variable(variable)
            layer._post_track_variable(new)
            if id(variable) in attributes:
                with tracking.DotNotTrackScope():  # already in its list
                    setattr(layer, attributes[id(variable)], new)
    finally:
        if locked:
            layer._tracker.lock()


def with_dtype_policy(model, policy):
    """A copy of `model` that computes under another dtype policy.

    The way to run a float32-trained model fast on a CPU whose bfloat16
    arithmetic is fast (see `bfloat16_cpu`): `with_dtype_policy(model,
    "mixed_bfloat16")`. Variables stay float32 (same values, copied), each
    layer computes in the policy's compute dtype, and the model's output
    layers keep their own policy, so probabilities stay float32 (BENCHMARKS.md
    measures the agreement with float32). Keras has a global policy
    (`keras.config.set_dtype_policy`), which applies only to models built
    after it is set; a `.keras` file records each layer's policy, so a
    loaded model needs this.

    Args:
        model: a `keras.Model` (a keras_vit model or any functional model).
        policy: a Keras dtype policy or its name: `"mixed_bfloat16"`,
            `"mixed_float16"` (GPUs), `"float32"`, ...

    Returns:
        A new `keras.Model` with the same weights; `model` is unchanged.

    Example:

    >>> model = keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=3)
    >>> fast = keras_vit.with_dtype_policy(model, "mixed_bfloat16")
    >>> block = fast.get_layer("block_0")
    >>> block.compute_dtype, block.variable_dtype
    ('bfloat16', 'float32')
    >>> fast(np.zeros((1, 16, 16, 3), "float32")).dtype.name
    'float32'
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received {type(model).__name__}.")
    try:
        policy = keras.dtype_policies.get(policy)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown dtype policy {policy!r}: expected a keras.DTypePolicy or one of "
            "'float32', 'mixed_bfloat16', 'mixed_float16', 'bfloat16', 'float16'."
        ) from error
    if policy.quantization_mode is not None:
        raise ValueError(
            f"policy {policy.name!r} is a quantization policy; use model.quantize() for that."
        )
    copy = _set_policy(keras.models.clone_model(model), policy)
    # Variable by variable rather than set_weights(get_weights()): no third,
    # NumPy copy of every weight at once (ViT-B/16: 344 MB at the peak).
    if len(copy.weights) != len(model.weights):
        raise ValueError(f"The copy of {model.name!r} has {len(copy.weights)} weights, the model "
                         f"{len(model.weights)}: is it quantized? Copy the float model.")
    for target, source in zip(copy.weights, model.weights):
        # A copy of the value, not the value: on JAX an assigned array is
        # shared, and Keras donates a model's arrays to its compiled steps,
        # which would delete them under the other model.
        target.assign(keras.ops.copy(source))
    if isinstance(copy, models.VisionTransformer):
        copy.class_names = getattr(model, "class_names", None)
    return copy


PRECISIONS = ("auto", "float32", "bfloat16", "int8")

# The layers that read their variables only at their compute dtype: under
# `mixed_bfloat16` Keras casts each one to bfloat16 on every call, so
# storing them in bfloat16 (the `"bfloat16"` policy) computes the same
# values, bit for bit, from half the memory and without the casts.
# LayerNorms are not among them: they compute in float32 from float32
# scales and offsets.
_BFLOAT16_STORED = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.MultiHeadAttention,
                    vit_layers.PatchEncoder, vit_layers.TransformerBlock)


def auto_precision():
    """The precision that `"auto"` picks on this CPU: `"bfloat16"` where
    `bfloat16_cpu()` is True, else `"float32"`.

    int8 is never picked automatically: it changes the weights (Keras'
    quantization rounds them; top-1 agreement with float32 was 99.8% on
    Fashion-MNIST's test set), so it is a choice the user makes, although
    on CPUs with VNNI it is the fastest of the three (BENCHMARKS.md).
    """
    return "bfloat16" if bfloat16_cpu() else "float32"


def with_precision(model, precision, copy=True):
    """`model` computing at `precision`: the one knob for inference precision.

    - `"float32"`: `model` itself when it computes in float32, else a float32
      copy;
    - `"bfloat16"`: `with_dtype_policy(model, "mixed_bfloat16")`, whose
      layers that compute only in bfloat16 (`Dense`, `EinsumDense`,
      `MultiHeadAttention`, `PatchEncoder`, `TransformerBlock`) then also
      store their variables in it (the `"bfloat16"` policy): the same
      outputs, bit for bit, from half the weight memory (ViT-B/16: 172 MB
      instead of 344 MB) and without a cast of every kernel on each call.
      LayerNorms keep float32 scales and offsets, the output layer its
      policy;
    - `"int8"`: a copy quantized by Keras (`model.quantize("int8")`): every
      `Dense` and `EinsumDense` kernel (patch projection, attention, MLP,
      head) is stored in int8 with a per-channel scale, and its matrix
      product runs on int8 inputs quantized per token. On TensorFlow a
      keras_vit model's `predict`, `evaluate` and eager call run those
      products on oneDNN's int8 kernel where the CPU has VNNI or AMX
      (`keras_vit.backend.int8_dense`); elsewhere, and for other models,
      the copy's steps are compiled by XLA (`jit_compile`, see
      `with_xla_if_int8`);
    - `"auto"`: `auto_precision()`.

    Outputs stay float32 at every precision. `model` is never changed,
    unless `copy=False`.

    Args:
        model: a `keras.Model` computing in float32 (a keras_vit model or any
            functional model).
        precision: one of `PRECISIONS`.
        copy: `False`: change `model` itself and return it, as Keras'
            `quantize` does, instead of a copy: no second copy of the weights
            (ViT-B/16: 344 MB), for a model loaded only to run at
            `precision`.

    Returns:
        A `keras.Model`.

    Example:

    >>> model = keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=3)
    >>> fast = keras_vit.with_precision(model, "int8")
    >>> fast.get_layer("head").quantization_mode, model.get_layer("head").quantization_mode
    ('int8', None)
    >>> fast(np.zeros((1, 16, 16, 3), "float32")).dtype.name
    'float32'
    """
    check_choice("precision", precision, PRECISIONS)
    if not isinstance(copy, bool):
        raise ValueError(f"copy must be True or False, received {copy!r}.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received {type(model).__name__}.")
    current = precision_of(model)
    if current == "int8":
        raise ValueError(f"Model {model.name!r} is already quantized; with_precision takes the float32 model.")
    if precision == "auto":
        precision = auto_precision()
    if precision == current and (precision == "float32" or not copy):
        return model
    if precision == "bfloat16":
        model = with_dtype_policy(model, "mixed_bfloat16") if copy else _set_policy(model, "mixed_bfloat16")
        return _set_policy(model, "bfloat16", only=_BFLOAT16_STORED)
    if copy:
        model = with_dtype_policy(model, "float32")  # also because quantize() changes a model in place
    elif current != "float32":
        _set_policy(model, "float32")
    if precision == "int8":
        with warnings.catch_warnings():
            # Keras names every layer without weights to quantize (Patches,
            # Dropout, ...): nothing to act on.
            warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
            with collect_garbage_once():
                model.quantize("int8")
        model.predict_function = model.test_function = model.train_function = None
    return with_xla_if_int8(model)


def with_xla_if_int8(model):
    """Sets `model.jit_compile = True` when `model` is quantized to int8,
    Keras runs on TensorFlow and its steps cannot take oneDNN's int8 kernel
    (False where they can: XLA cannot compile that kernel); returns `model`.

    TensorFlow's own CPU kernel for the int8 x int8 -> int32 matrix products
    that Keras' quantized `Dense` and `EinsumDense` run (`BatchMatMulV3`) is
    a generic one: a (1576, 768) x (768, 3072) product takes 131 ms where
    float32 takes 42 ms (AMD EPYC, 2 cores); XLA's takes 28 ms. With XLA an
    int8 ViT-B/16 runs about 4x faster than without (BENCHMARKS.md); with
    oneDNN's int8 kernel (CPUs with VNNI or AMX, keras_vit's models)
    1.5-1.7x faster again at batch 8 (AMD EPYC Zen 4). Keras compiles a
    model's predict, evaluate and train steps with XLA when its
    `jit_compile` is True, and `with_precision`, `keras_vit.load_model` and
    the wrappers of this module set it for int8 models. Where it stays
    False, keras_vit's model classes still compile an int8 model's train
    step with XLA (`VisionTransformer.make_train_function`).
    """
    if keras.backend.backend() == "tensorflow" and precision_of(model) == "int8":
        model.jit_compile = not _onednn_int8_applies(model)
    return model


def _onednn_int8_applies(model):
    """Whether `model`'s predict and evaluate run their int8 products on
    oneDNN's int8 kernel (`keras_vit.backend.int8_dense`): a keras_vit model
    class, whose steps mark their graphs as in-process, with fast kernels,
    on a CPU where `keras_vit.backend.onednn_int8()`. Those graphs must not
    be compiled by XLA, which cannot compile oneDNN's op."""
    return isinstance(model, (models.VisionTransformer, models.WrapperModel)) and \
        backend.onednn_int8() and any(getattr(layer, "fast_kernels", False)
                                      for layer in model._flatten_layers(include_self=False, recursive=True))


def precision_of(model):
    """The precision `model` computes at: `"int8"` if any layer is quantized
    to int8, else `"bfloat16"` or `"float16"` if any layer with weights
    computes in it (mixed policies keep some layers in float32), else
    `"float32"`."""
    layers = model._flatten_layers(include_self=False, recursive=True)
    dtypes = set()
    for layer in layers:
        if getattr(layer, "quantization_mode", None) == "int8":
            return "int8"
        if layer.weights:
            dtypes.add(layer.compute_dtype)
    return next((name for name in ("bfloat16", "float16") if name in dtypes), "float32")


TTA_MODES = ("none", "flip")


def check_tta(tta):
    """Returns `tta` if it names a test-time augmentation (`TTA_MODES`)."""
    return check_choice("tta", tta, TTA_MODES)


def with_tta(model, tta):
    """`model` itself for `tta="none"`, `with_flip_tta(model)` for `"flip"`."""
    return with_flip_tta(model) if check_tta(tta) == "flip" else model


def with_probabilities(model):
    """`model` if it outputs probabilities, else `model` followed by a softmax.

    A keras_vit classifier built with `classifier_activation=None` outputs
    logits; exports and TTA average probabilities, so they use this first.
    """
    last = models.get_part(model, "predictions")
    activation = getattr(last, "activation", None)
    if activation is not None and getattr(activation, "__name__", "") != "linear":
        return model
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(model.outputs[0])
    return with_xla_if_int8(models.WrapperModel(model.inputs, probabilities, name=f"{model.name}_probabilities"))


def with_flip_tta(model):
    """A model that averages `model`'s predictions over each image and its
    mirror image (test-time augmentation with horizontal flips).

    For models trained with random flips, whose classes look the same
    mirrored (photos, clothes; not digits or text); it costs twice the
    inference time. The same as ttach's `ClassificationTTAWrapper` with
    `flip_transform()` and `merge_mode="mean"`.

    Args:
        model: a `keras.Model` with one image input `(batch, height, width,
            channels)` and one output, e.g. the class probabilities of a
            keras_vit classifier.

    Returns:
        A functional `keras.Model` (a `keras_vit.models.WrapperModel`)
        sharing `model`'s weights (training one trains the other); it saves,
        loads, predicts and evaluates like any Keras model.

    Example:

    >>> model = keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=3)
    >>> tta = keras_vit.with_flip_tta(model)
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
    >>> mirrored = images[:, :, ::-1]
    >>> expected = (model.predict(images, verbose=0) + model.predict(mirrored, verbose=0)) / 2
    >>> np.allclose(tta.predict(images, verbose=0), expected, atol=1e-6)
    True
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received {type(model).__name__}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"with_flip_tta needs a model with one input and one output; {model.name!r} has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    spec = model.inputs[0]
    if len(spec.shape) != 4:
        raise ValueError(
            f"with_flip_tta needs an image input (batch, height, width, channels); "
            f"{model.name!r} takes input shape {tuple(spec.shape)}."
        )
    images = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype, name=spec.name)
    mirrored = vit_layers.HorizontalFlip(name="mirror", dtype=spec.dtype)(images)
    output_dtype = model.outputs[0].dtype
    average = keras.layers.Average(name="flip_average", dtype=output_dtype)(
        [model(images), model(mirrored)]
    )
    return with_xla_if_int8(models.WrapperModel(images, average, name=f"{model.name}_flip_tta"))
