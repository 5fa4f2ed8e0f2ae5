"""Functional-API ViT models with the keras.applications builder signature.

The model class (`VisionTransformer` and its named parts), `ViT(...)` and
the standard builders; over 400 lines because the builders' shared
docstring, which keras.applications users read first, is written out here.
"""

import weakref

import keras
import numpy as np

from keras_vit import backend
from keras_vit import layers as vit_layers
from keras_vit import variants
from keras_vit._validation import check_choice, check_positive_int, check_rate

_POOLINGS = ("token", "avg", None)

# Each model's compiled inference call (see `VisionTransformer.__call__`)
# as `(jit_compile, function, variables)`, kept outside the model: a
# `tf.function` attribute would be tracked by TensorFlow and saved into
# every SavedModel of the model. `variables` (their ids) is what the
# function's graph captured: a model changed in place (`quantize`,
# `enable_lora` on a layer, `with_precision(..., copy=False)`) has others
# and gets a new function, as Keras resets its predict function.
_INFERENCE_FUNCTIONS = weakref.WeakKeyDictionary()


class _BuildsBeforeTracing:
    """Mixed into the keras_vit model classes (`VisionTransformer`,
    `WrapperModel`) so that their steps are traced once, so that their
    inference steps are known to stay in the process (int8 products may
    then take oneDNN's kernel: `keras_vit.backend.in_process_inference`),
    and so that an int8 model's train step is compiled by XLA
    (`make_train_function`)."""

    # (JAX's trainer passes the state first: any arguments pass through.)
    def predict_step(self, *args, **kwargs):
        with backend.in_process_inference():
            return super().predict_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        with backend.in_process_inference():
            return super().test_step(*args, **kwargs)

    def make_train_function(self, force=False):
        """Keras' train function; for an int8 model whose `jit_compile` is
        False, compiled by XLA all the same.

        int8 models keep `jit_compile` False where their predict and evaluate
        run oneDNN's int8 kernel, which XLA cannot compile
        (`keras_vit.with_xla_if_int8`), and a model quantized by
        `model.quantize("int8")` alone has Keras' CPU default, False. Their
        training steps never take oneDNN's kernel (it is for inference),
        and TensorFlow's own int8 product, which Keras' int8 layers run
        there, is some 4x slower than XLA's: fine-tuning a ViT-S/16 quantized
        to int8 with LoRA (batch 16) took 5.1 s a step without XLA and 2.6 s
        with it on an AMD EPYC Zen 4. Not under a distribution strategy
        (Keras' `jit_compile` decides there) nor with `run_eagerly`.
        """
        if (getattr(self, "train_function", None) is None or force) and _xla_for_int8_training(self):
            self._jit_compile = True
            try:
                return super().make_train_function(force)
            finally:
                self._jit_compile = False
        return super().make_train_function(force)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Builds the optimizer's and the compiled metrics' variables before
        the first step is traced, from the data's shapes.

        Keras' TensorFlow trainer does this only under a distribution
        strategy; without one it defers to the first trace of the train (or
        test) step, whose variable creation then makes `tf.function` trace
        the whole step a second time (TensorFlow's rule for functions that
        create variables). That second trace of the train step took 4 s of
        the tiny test model's 9 s `fit` on an AMD EPYC Zen 1, with losses
        equal bit for bit either way (tests/test_training.py). The shapes
        come from the dataset's `element_spec`, so no batch is consumed
        (Keras' strategy path takes one from the iterator). Anything else,
        including a strategy (and its multi-worker fix in
        `keras_vit.distribute`), goes to Keras' own method.
        """
        if (keras.backend.backend() == "tensorflow" and getattr(self, "_distribute_strategy", True) is None
                and hasattr(self, "_symbolic_build")):
            if self._symbolically_built():
                # Every later fit/evaluate (each epoch's validation among
                # them): finding the dataset's spec below only to build
                # nothing took 25 ms a call on an AMD EPYC Zen 1.
                return
            specs = data_batch
            if specs is None and iterator is not None:
                get_dataset = getattr(iterator, "_get_iterator", None)
                specs = getattr(get_dataset(), "element_spec", None) if get_dataset else None
            if specs is not None and _all_dense_specs(specs):
                try:
                    if not self._build_from_outputs(specs):
                        self._symbolic_build(data_batch=specs)
                    return
                except Exception:  # e.g. fit without targets: Keras' deferred build, as before
                    pass
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _build_from_outputs(self, specs):
        """What Keras' `_symbolic_build` builds (compiled metrics and loss,
        optimizer), for a built functional model with one input and one
        output, without tracing the model; returns False, building nothing,
        for any other model.

        Keras finds the prediction's shape by tracing the whole model in a
        scratch graph (`compute_output_spec(self, x)`), which took 1.9 s of
        the first `evaluate` of the Fashion-MNIST recipe's model on an AMD
        EPYC Zen 1, as long as tracing the test step itself. A functional
        model already knows its output: the prediction is its output tensor
        with the batch's leading dimension.
        """
        inputs, outputs = getattr(self, "inputs", None), getattr(self, "outputs", None)
        if not inputs or len(inputs) != 1 or not outputs or len(outputs) != 1:
            return False
        if not all(layer.built for layer in self._flatten_layers()):
            return False

        def symbolic(spec):
            return None if spec is None else keras.KerasTensor(spec.shape, keras.backend.standardize_dtype(spec.dtype))

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(keras.tree.map_structure(symbolic, specs))
        if not isinstance(x, keras.KerasTensor) or len(x.shape) != len(inputs[0].shape):
            return False
        # Keras' own tool for it, as `_symbolic_build` uses; not public API
        # (an ImportError in a later Keras falls back to Keras' deferred build).
        from keras.src.backend import compute_output_spec

        output = outputs[0]
        y_pred = keras.KerasTensor((x.shape[0],) + tuple(output.shape[1:]), output.dtype)
        if self._compile_metrics is not None and not self._compile_metrics.built:
            compute_output_spec(self.compute_metrics, x, y, y_pred, sample_weight=sample_weight)
        if self._compile_loss is not None and not self._compile_loss.built:
            compute_output_spec(self._compute_loss, x, y, y_pred, sample_weight=sample_weight, training=False)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        self._post_build()
        return True

    def _symbolically_built(self):
        """Whether the optimizer, the compiled loss and the compiled metrics
        all have their variables (what `_symbolic_build` creates)."""
        parts = (self.optimizer, getattr(self, "_compile_loss", None), getattr(self, "_compile_metrics", None))
        return self.built and all(part is None or part.built for part in parts)


def _xla_for_int8_training(model):
    """Whether `make_train_function` compiles `model`'s train step by XLA
    although its `jit_compile` is False: an int8 model on TensorFlow, not
    run eagerly, without a distribution strategy, whose layers Keras lets
    XLA compile."""
    if keras.backend.backend() != "tensorflow" or model.run_eagerly or model.jit_compile is not False:
        return False
    if getattr(model, "_distribute_strategy", None) is not None:
        return False
    from keras_vit.inference import precision_of  # (inference imports this module)

    if precision_of(model) != "int8":
        return False
    try:  # Keras' own test for `jit_compile=True` (not public API)
        from keras.src.trainers.trainer import model_supports_jit
    except ImportError:
        return True
    return model_supports_jit(model)


@keras.saving.register_keras_serializable(package="keras_vit")
class WrapperModel(_BuildsBeforeTracing, keras.Model):
    """The functional `keras.Model` that the wrappers of `keras_vit`
    (`with_flip_tta`, the softmax of `with_probabilities`) return around a
    model.

    A plain functional model, as `keras.Model(inputs, outputs)` gives, whose
    `evaluate` and `fit` build the compiled metrics from the output tensor
    and then trace their step once, as `VisionTransformer`'s do (Keras
    traces the model to build them, then the step twice): the first flip-TTA
    `evaluate` of the Fashion-MNIST recipe's model took 4.0 s instead of
    6.1-6.4 s on an AMD EPYC Zen 1.
    """


@keras.saving.register_keras_serializable(package="keras_vit")
class VisionTransformer(_BuildsBeforeTracing, keras.Model):
    """The functional `keras.Model` that the keras_vit builders return.

    It is a plain functional model (same layers, config, `.keras` files,
    `fit`, `predict`, export) with three additions:

    - named parts: `patch_encoder`, `blocks`, `encoder_norm`, `pre_logits`,
      `head` and `preprocessing` (None where the model has none);
    - `class_names`, kept in its config;
    - calling it eagerly for inference, `model(images)` or
      `model(images, training=False)` on a NumPy array or a tensor, runs a
      compiled graph of the model (a `tf.function`, traced once per input
      signature; `reduce_retracing` lets batch sizes share one) instead of
      executing it op by op, as timm users expect `model(x)` to be the
      fast path (BENCHMARKS.md). Calls with `training=True`, on symbolic
      inputs, with other arguments, under a distribution strategy or inside
      a graph take Keras' own path. The graph computes what any other graph
      of the model computes (the kernel choice is the layers', see
      `keras_vit.backend`).
    """

    @property
    def preprocessing(self):
        """The `Rescaling` layer of `include_preprocessing=True`, or None."""
        return get_part(self, "preprocessing")

    @property
    def patch_encoder(self):
        """The `PatchEncoder` layer."""
        return get_part(self, "patch_encoder")

    @property
    def blocks(self):
        """The `TransformerBlock` layers, first to last, as a tuple."""
        return get_blocks(self)

    @property
    def encoder_norm(self):
        """The final LayerNorm."""
        return get_part(self, "encoder_norm")

    @property
    def pre_logits(self):
        """The tanh pre-logits `Dense` layer, or None."""
        return get_part(self, "pre_logits")

    @property
    def head(self):
        """The classification head (`Dense`), or None without a top."""
        return get_part(self, "head")

    @property
    def patch_grid(self):
        """`(rows, columns)` of the patch grid of the model's input size."""
        return patch_grid(self)

    @property
    def class_names(self):
        """The name of each output class, or `None` when the model has none.

        Set by named pretrained weights (ImageNet's names), `from_pretrained`
        (the repository's labels) and training runs (the data set's
        classes); kept in the model's config, so `.keras` files keep it.
        `keras-vit predict` prints these names and an export puts them into
        its `top_k_labels`.
        """
        return getattr(self, "_class_names", None)

    @class_names.setter
    def class_names(self, names):
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise TypeError(f"class_names must be a list of strings or None, received {names!r}.")
            names = tuple(names)
            classes = self.output_shape[-1] if isinstance(self.output_shape, tuple) else None
            if classes is not None and len(names) != classes:
                raise ValueError(
                    f"class_names has {len(names)} names but model {self.name!r} has {classes} outputs."
                )
        # A tuple, not a list: Keras would track a list attribute.
        self._class_names = names

    def get_config(self):
        config = super().get_config()
        if self.class_names is not None:
            config["class_names"] = list(self.class_names)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        names = config.pop("class_names", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.class_names = names
        return model

    def __call__(self, *args, **kwargs):
        if self._compiled_call_applies(args, kwargs):
            jit_compile = self.jit_compile is True
            variables = tuple(id(v) for v in self.variables)  # 0.2 ms for ViT-B/16's 212
            cached = _INFERENCE_FUNCTIONS.get(self)
            if cached is None or cached[0] != jit_compile or cached[2] != variables:
                cached = _INFERENCE_FUNCTIONS[self] = (jit_compile, _inference_function(self, jit_compile), variables)
            return cached[1](args[0])
        return super().__call__(*args, **kwargs)

    def _compiled_call_applies(self, args, kwargs):
        if keras.backend.backend() != "tensorflow":
            return False
        import tensorflow as tf

        return (
            len(args) == 1
            and set(kwargs) <= {"training"}
            and not kwargs.get("training")
            and isinstance(args[0], (np.ndarray, tf.Tensor))
            and tf.executing_eagerly()
            and not tf.distribute.has_strategy()
            and keras.backend.backend() == "tensorflow"
        )


# The parts of a keras_vit model by the names the builder gives them. The
# functions take any `keras.Model` (a plain functional model loaded from an
# old `.keras` file, a clone) so that weights, explain, export and training
# find the parts in one way; `VisionTransformer`'s properties use them.
PARTS = {
    "preprocessing": keras.layers.Rescaling,
    "patches": vit_layers.Patches,
    "patch_encoder": vit_layers.PatchEncoder,
    "encoder_norm": keras.layers.LayerNormalization,
    "pre_logits": keras.layers.Dense,
    "head": keras.layers.Dense,
    "predictions": keras.layers.Activation,
}


def _all_dense_specs(structure):
    """Whether every leaf of a batch (or of a dataset's `element_spec`) is a
    dense tensor or `tf.TensorSpec`, whose shape and dtype are all that
    Keras' symbolic build reads."""
    import tensorflow as tf

    sparse = (tf.RaggedTensorSpec, tf.SparseTensorSpec, tf.RaggedTensor, tf.SparseTensor)
    leaves = keras.tree.flatten(structure)
    return bool(leaves) and all(
        leaf is None or (hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, sparse))
        for leaf in leaves
    )


def get_part(model, name):
    """The layer of `model` that the builder named `name` (see `PARTS`), or None."""
    kind = PARTS.get(name)
    if kind is None:
        raise ValueError(f"Unknown model part {name!r}; expected one of {sorted(PARTS)}.")
    return next((layer for layer in model.layers if layer.name == name and isinstance(layer, kind)), None)


def get_blocks(model):
    """The `TransformerBlock` layers of `model`, first to last, as a tuple."""
    return tuple(layer for layer in model.layers if isinstance(layer, vit_layers.TransformerBlock))


def patch_grid(model):
    """`(rows, columns)` of patches that `model`'s fixed input size makes.

    Raises:
        ValueError: the model has no `Patches` layer or no fixed input size.
    """
    patches = get_part(model, "patches")
    height, width = model.inputs[0].shape[1:3] if model.inputs else (None, None)
    if patches is None or height is None or width is None:
        raise ValueError(f"The model {model.name!r} has no Patches layer or no fixed input size.")
    return height // patches.patch_size, width // patches.patch_size


def _inference_function(model, jit_compile):
    """The model's eager inference call as a `tf.function`, compiled by XLA
    where the model's `jit_compile` is True, as Keras compiles its predict
    step (`with_xla_if_int8` sets it for int8 models where oneDNN's int8
    kernel does not apply: TensorFlow's own int8 product is some 4x slower
    than XLA's)."""
    import tensorflow as tf

    # A weak reference: the function must not keep the model alive.
    model_ref = weakref.ref(model)

    def call(inputs):
        with backend.in_process_inference():
            return keras.Model.__call__(model_ref(), inputs, training=False)

    return tf.function(call, reduce_retracing=True, jit_compile=jit_compile)


_BUILDER_DOC = """Instantiates the {title} Vision Transformer.

    Reference: Dosovitskiy et al., "An Image is Worth 16x16 Words:
    Transformers for Image Recognition at Scale" (ICLR 2021).

    The model expects pixels mapped to [-1, 1] as the original checkpoints
    were trained: call `keras_vit.preprocess_input` on images in [0, 255]
    first (or build with `include_preprocessing=True`).

    `weights` names pretrained weights as keras.applications does:
    `"imagenet"` (the recommended ImageNet-1k fine-tuned checkpoint of the
    size; {default_weights}), `"imagenet21k"` (the ImageNet-21k pre-trained
    one, 21,843 classes, the start for fine-tuning), or any tag of
    `keras_vit.list_weights()` (timm's names: `"augreg_in21k_ft_in1k"`,
    `"orig_in21k"`, ...). They are downloaded once from Google's `vit_models`
    bucket into Keras' cache (`$KERAS_HOME/models`); `KERAS_VIT_WEIGHTS_BASE_URL`
    points at a mirror. `"hf://ORG/NAME"` reads a timm or transformers ViT
    repository's `model.safetensors` through huggingface_hub. A path loads a
    checkpoint file: a Google `.npz` (ViT paper, AugReg, big_vision), a timm
    or Hugging Face `.safetensors`, or a keras_vit `.weights.h5`. `None`:
    random initialisation, as in the original (zero class token and head,
    N(0, 0.02) position embedding).

    A checkpoint of another resolution has its position embedding resampled
    to this model's grid; a head with another number of classes is left
    freshly initialised, with a warning (the fine-tuning case). With named
    weights, `input_shape` defaults to the checkpoint's resolution (where a
    tag has files at 224 and 384, the one nearest `input_shape` is taken),
    `classes` to its classes, and a model that keeps its head knows
    ImageNet's class names (`model.class_names`, `keras_vit.decode_predictions`).

    Args:
{variant_arg}        include_top: whether to include the classification head.
        weights: a named checkpoint (`"imagenet"`, `"imagenet21k"`, a tag),
            `"hf://ORG/NAME"`, the path of a checkpoint file, or `None`.
        input_tensor: optional Keras tensor (output of `keras.Input()`) to use
            as the image input.
        input_shape: `(height, width, channels)`, default `(224, 224, 3)`;
            height and width must be divisible by the patch size.
        pooling: how the token features become one vector: `"token"` (the
            class token, the default with `include_top=True`), `"avg"` (mean
            of the patch tokens), or `None` (with `include_top=False`: all
            tokens, shape `(batch, num_patches + 1, hidden_dim)`). With
            `"token"` the last block computes the class token's output only
            (`TransformerBlock(class_token_only=True)`; the other tokens'
            outputs would be discarded): same results, faster. Its output and `encoder_norm`'s are then
            `(batch, 1, hidden_dim)`; for every token's features build the
            model with `include_top=False, pooling=None`.
        classes: number of classes of the head (with `include_top=True`);
            default: the named checkpoint's, else 1000.
        classifier_activation: activation of the head's output (`"softmax"`,
            `None` for logits, ...); the output is float32 under mixed
            precision.
        dropout_rate: dropout after the position embedding and in each block.
        attention_dropout_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth rate of the last block, increasing
            linearly from 0 over the blocks (as in timm and DeiT).
        representation_size: width of the tanh "pre-logits" layer that
            the original ImageNet-21k checkpoints have before the head;
            `None` for none (a named checkpoint whose head is kept brings its
            own).
        name: model name.
        include_preprocessing: if True, the model takes pixels in [0, 255]
            and applies `preprocess_input` itself (a `Rescaling` layer named
            "preprocessing"), as training runs and exports do.
{extra_args}
    Returns:
        A `keras.Model`.

    Example:

    >>> model = keras_vit.{example}
    >>> model.output_shape
    {example_output}
"""


def ViT(
    variant=None,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    drop_path_rate=0.0,
    representation_size=None,
    name=None,
    include_preprocessing=False,
    *,
    patch_size=None,
    hidden_dim=None,
    num_layers=None,
    num_heads=None,
    mlp_dim=None,
):
    config = _architecture(
        variant,
        patch_size=patch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
    )
    from keras_vit.weights import source as weights_source

    source = weights_source.resolve(variant, config, weights, input_tensor, input_shape)
    if input_shape is None and input_tensor is None and source.image_size is not None:
        input_shape = (source.image_size, source.image_size, 3)
    if classes is None:
        classes = source.classes or 1000
    if representation_size is None and include_top is True and classes == source.classes:
        representation_size = source.representation_size
    check_choice("pooling", pooling, _POOLINGS)
    if not isinstance(include_preprocessing, bool):
        raise TypeError(
            "include_preprocessing must be True or False, received "
            f"include_preprocessing={include_preprocessing!r}."
        )
    if not isinstance(include_top, bool):
        raise TypeError(f"include_top must be True or False, received include_top={include_top!r}.")
    if include_top:
        check_positive_int("classes", classes)
        pooling = pooling or "token"
    elif representation_size is not None:
        raise ValueError(
            f"representation_size={representation_size} adds the pre-logits "
            "layer in front of the head, so it needs include_top=True; "
            "received include_top=False."
        )
    if representation_size is not None:
        check_positive_int("representation_size", representation_size)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    attention_dropout_rate = check_rate("attention_dropout_rate", attention_dropout_rate)
    drop_path_rate = check_rate("drop_path_rate", drop_path_rate)

    images = _image_input(input_tensor, input_shape, config.patch_size)
    height, width = images.shape[1], images.shape[2]
    num_patches = (height // config.patch_size) * (width // config.patch_size)

    x = images
    if include_preprocessing:
        # The checkpoints' convention, (x - 127.5) / 127.5, inside the model.
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing")(x)
    x = vit_layers.Patches(config.patch_size, name="patches")(x)
    x = vit_layers.PatchEncoder(
        num_patches, config.hidden_dim, dropout_rate=dropout_rate, name="patch_encoder"
    )(x)
    for index in range(config.num_layers):
        # Stochastic depth grows linearly with depth, as in timm and DeiT.
        block_drop_path = (
            drop_path_rate * index / (config.num_layers - 1) if config.num_layers > 1 else 0.0
        )
        # With class-token pooling nothing uses the last block's other
        # tokens: it computes the class token's output only (same result).
        last_class_token = pooling == "token" and index == config.num_layers - 1
        block_kwargs = {"class_token_only": True} if last_class_token else {}
        x = vit_layers.TransformerBlock(
            config.hidden_dim,
            config.num_heads,
            config.mlp_dim,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            drop_path_rate=block_drop_path,
            name=f"block_{index}",
        )(x, **block_kwargs)
    x = vit_layers.LayerNorm(name="encoder_norm")(x)

    if pooling == "token":
        x = vit_layers.ClassTokenPooling(name="token_pooling")(x)
    elif pooling == "avg":
        x = vit_layers.PatchTokenAveragePooling(name="avg_pooling")(x)

    if include_top:
        if representation_size is not None:
            x = keras.layers.Dense(representation_size, activation="tanh", name="pre_logits")(x)
        # The original zero-initialises the head.
        x = keras.layers.Dense(classes, kernel_initializer="zeros", name="head")(x)
        # Float32 outputs under mixed precision, as Keras' guide asks of the
        # last layer.
        x = keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else images
    model = VisionTransformer(inputs, x, name=name or _default_name(variant, config))
    source.load(model)
    return model


ViT.__doc__ = _BUILDER_DOC.format(
    title="a",
    default_weights="the default of the standard builders such as `ViTB16`; `ViT` itself defaults to `None`",
    variant_arg=(
        "        variant: a variant string `\"<size>/<patch_size>\"` (`\"B/16\"`, `\"Ti/4\"`,\n"
        "            ...; see `keras_vit.variants`), or `None` to give every size below.\n"
    ),
    extra_args=(
        "        patch_size, hidden_dim, num_layers, num_heads, mlp_dim: keyword-only\n"
        "            ints that override the variant's sizes (all five are needed\n"
        "            without a variant).\n"
    ),
    example='ViT("S/32", include_top=False, pooling="token")',
    example_output="(None, 384)",
)


def _architecture(variant, **overrides):
    given = {key: value for key, value in overrides.items() if value is not None}
    if variant is None:
        missing = [key for key in variants.ARCHITECTURE_FIELDS if key not in given]
        if missing:
            raise ValueError(
                "Without a variant string, ViT needs every size argument; "
                f"missing {', '.join(missing)}. Pass e.g. variant='B/16'."
            )
        return variants.ViTConfig(**given)
    base = variants.get_config(variant)
    return variants.ViTConfig(**{**base.__dict__, **given})


def _image_input(input_tensor, input_shape, patch_size):
    if input_shape is None:
        if input_tensor is not None and input_tensor.shape is not None:
            input_shape = tuple(input_tensor.shape[1:])
        else:
            input_shape = (224, 224, 3)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "input_shape must be (height, width, channels), received "
            f"input_shape={input_shape!r}."
        )
    height, width, channels = input_shape
    for arg, value in (("height", height), ("width", width), ("channels", channels)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"input_shape must hold positive ints (the position embedding "
                f"needs a fixed grid); received {arg}={value!r} in "
                f"input_shape={tuple(input_shape)!r}."
            )
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"input_shape={tuple(input_shape)!r}: height {height} and width "
            f"{width} must both be divisible by patch_size={patch_size}."
        )
    if input_tensor is None:
        return keras.Input(shape=tuple(input_shape), name="images")
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=tuple(input_shape), name="images")
    if tuple(input_tensor.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"input_tensor has shape {tuple(input_tensor.shape)} but "
            f"input_shape={tuple(input_shape)!r}."
        )
    return input_tensor


def _default_name(variant, config):
    if variant is not None:
        return "vit_" + variant.strip().lower().replace("/", "")
    return f"vit_d{config.hidden_dim}_l{config.num_layers}_p{config.patch_size}"


def _make_builder(variant):
    from keras_vit.weights import pretrained

    default_weights = "imagenet" if pretrained.default_tag(variant) else None

    def builder(
        include_top=True,
        weights=default_weights,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=None,
        classifier_activation="softmax",
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        representation_size=None,
        name=None,
        include_preprocessing=False,
    ):
        return ViT(
            variant,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            drop_path_rate=drop_path_rate,
            representation_size=representation_size,
            name=name,
            include_preprocessing=include_preprocessing,
        )

    function_name = "ViT" + variant.replace("/", "")
    builder.__name__ = builder.__qualname__ = function_name
    builder.__module__ = __name__
    builder.__doc__ = _BUILDER_DOC.format(
        title=f"ViT-{variant}",
        default_weights=(
            f"the default here: `{pretrained.resolve(variant, 'imagenet').timm_name}`"
            if default_weights else f"ViT-{variant} has none, so `weights` defaults to `None`"
        ),
        variant_arg="",
        extra_args="",
        example=f"{function_name}(include_top=False, pooling=\"token\", weights=None)",
        example_output=f"(None, {variants.SIZES[variant.split('/')[0]]['hidden_dim']})",
    ) if variant != "Test/4" else (
        "Instantiates the few-thousand-parameter ViT used by the tests "
        "(16 wide, 2 deep, 4x4 patches); arguments as for `ViT`."
    )
    return builder


ViTTest4 = _make_builder("Test/4")
ViTTi16 = _make_builder("Ti/16")
ViTS16 = _make_builder("S/16")
ViTS32 = _make_builder("S/32")
ViTB8 = _make_builder("B/8")
ViTB16 = _make_builder("B/16")
ViTB32 = _make_builder("B/32")
ViTL16 = _make_builder("L/16")
ViTL32 = _make_builder("L/32")
ViTH14 = _make_builder("H/14")

BUILDERS = {
    variant: globals()["ViT" + variant.replace("/", "")]
    for variant in variants.STANDARD_VARIANTS
}


def preprocess_input(x, data_format=None):
    """Maps pixels in [0, 255] to [-1, 1], the convention of ViT checkpoints.

    `(x - 127.5) / 127.5`, per channel, no ImageNet mean/std: what the ViT
    paper's, AugReg's and timm's `vit_*_224` weights expect.

    Args:
        x: images (NumPy array or tensor) with values in [0, 255].
        data_format: ignored; accepted for keras.applications compatibility.

    Returns:
        A float32 array or tensor of the same shape with values in [-1, 1].

    Example:

    >>> keras_vit.preprocess_input(np.array([0.0, 127.5, 255.0]))
    array([-1.,  0.,  1.], dtype=float32)
    """
    del data_format
    if not keras.ops.is_tensor(x):
        return ((np.asarray(x, dtype="float32") - 127.5) / 127.5).astype("float32")
    x = keras.ops.cast(x, "float32")
    return (x - 127.5) / 127.5
