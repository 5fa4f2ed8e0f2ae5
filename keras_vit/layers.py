"""The Vision Transformer's building blocks as Keras 3 layers.

Every layer here is written with `keras.ops`, creates the weights a checkpoint
holds with `add_weight` in `build()`, passes its dtype policy down to its
sublayers, returns its constructor arguments from `get_config()`, and is
registered for `.keras` serialization under the `keras_vit` package name.

One module for all of them (about 570 lines), as keras-hub's
`vit_layers.py`: together they are the architecture, read top to bottom.
"""

import keras
from keras import ops

from keras_vit import backend
from keras_vit._validation import check_positive_int, check_rate

# The original ViT (and timm, Hugging Face, keras-hub) use LayerNorm with
# epsilon 1e-6; Keras' default of 1e-3 would change every activation.
LAYER_NORM_EPSILON = 1e-6


def _quantized_sublayers(layer):
    """`{sublayer name: quantization mode}` of the quantized sublayers."""
    return {sub.name: sub.quantization_mode for sub in layer._flatten_layers(include_self=False)
            if sub.quantization_mode}


def _quantize_sublayers(layer, modes):
    # Keras' quantize() replaces a sublayer's kernel with quantized variables,
    # but the composite layer's config rebuilds float sublayers; quantizing
    # them again when built gives `.keras` files the variables they hold.
    for sub in layer._flatten_layers(include_self=False):
        mode = modes.get(sub.name)
        if mode and sub.quantization_mode != mode:
            sub.quantize(mode)


def _norm_policy(policy):
    """The policy of a block's LayerNorms under the block's `policy`.

    LayerNorms compute in float32 whatever their policy (Keras' and
    `LayerNorm`'s fast kernels alike), so under a pure 16-bit policy
    (`"bfloat16"`, which `keras_vit.with_precision` gives a block's matrix
    products) they keep float32 scales and offsets: the mixed policy of
    the same compute dtype. Any other policy is the block's own.
    """
    if policy.quantization_mode is None and policy.variable_dtype in ("bfloat16", "float16"):
        return keras.dtype_policies.DTypePolicy(f"mixed_{policy.compute_dtype}")
    return policy


@keras.saving.register_keras_serializable(package="keras_vit")
class Patches(keras.layers.Layer):
    """Cuts images into non-overlapping square patches and flattens each one.

    Patches come in row-major order (left to right, then top to bottom) and
    each is flattened in (row, column, channel) order, so that a `Dense`
    kernel of shape `(patch_size * patch_size * channels, hidden_dim)` equals
    the original Conv2D patch-embedding kernel of shape
    `(patch_size, patch_size, channels, hidden_dim)` reshaped.

    Args:
        patch_size: int, the side of each square patch in pixels.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Input shape:
        `(batch, height, width, channels)`; `height` and `width` must be
        divisible by `patch_size`.

    Output shape:
        `(batch, (height // patch_size) * (width // patch_size),
        patch_size * patch_size * channels)`.

    Example:

    >>> images = np.arange(2 * 32 * 32 * 3, dtype="float32").reshape(2, 32, 32, 3)
    >>> keras_vit.layers.Patches(16)(images).shape
    TensorShape([2, 4, 768])
    """

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = check_positive_int("patch_size", patch_size)

    def _check_image_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "Patches expects images of shape (batch, height, width, "
                f"channels), received an input of shape {tuple(input_shape)}."
            )
        height, width = input_shape[1], input_shape[2]
        for value in (height, width):
            if value is not None and value % self.patch_size:
                raise ValueError(
                    f"Image height {height} and width {width} must both be "
                    f"divisible by patch_size={self.patch_size}."
                )

    def build(self, input_shape):
        self._check_image_shape(input_shape)
        super().build(input_shape)

    def call(self, images):
        # A reshape and one transpose give exactly the (row, col, channel)
        # flattening of the Conv2D kernel, which `ops.image.extract_patches`
        # does not promise on every backend.
        shape = ops.shape(images)
        p = self.patch_size
        grid_h, grid_w, channels = shape[1] // p, shape[2] // p, shape[3]
        patches = ops.reshape(images, (-1, grid_h, p, grid_w, p, channels))
        patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5))
        return ops.reshape(patches, (-1, grid_h * grid_w, p * p * channels))

    def compute_output_shape(self, input_shape):
        self._check_image_shape(input_shape)
        batch, height, width, channels = input_shape
        p = self.patch_size
        num_patches = (
            None if height is None or width is None
            else (height // p) * (width // p)
        )
        patch_dim = None if channels is None else p * p * channels
        return (batch, num_patches, patch_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchEncoder(keras.layers.Layer):
    """Projects flattened patches, prepends a class token, adds positions.

    The linear projection (`projection`, a `Dense` layer) maps each flattened
    patch to `hidden_dim`; a learned class token (zeros at initialisation, as
    in the original ViT) is prepended; a learned position embedding of shape
    `(1, num_patches + 1, hidden_dim)` (normal, stddev 0.02) is added; dropout
    with `dropout_rate` follows.

    Args:
        num_patches: int, number of patches per image (196 for 224x224
            images and 16x16 patches).
        hidden_dim: int, the model width (768 for ViT-B).
        dropout_rate: float in [0, 1), dropout after adding positions.
        quantized_sublayers: `{sublayer name: mode}` of sublayers that
            Keras' `quantize` changed, written by `get_config` so that a
            `.keras` file of a quantized model loads; not set by hand.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Input shape:
        `(batch, num_patches, patch_dim)`, e.g. the output of `Patches`.

    Output shape:
        `(batch, num_patches + 1, hidden_dim)`.

    Example:

    >>> encoder = keras_vit.layers.PatchEncoder(num_patches=196, hidden_dim=768)
    >>> encoder(np.zeros((2, 196, 768), "float32")).shape
    TensorShape([2, 197, 768])
    >>> tuple(encoder.position_embedding.shape)
    (1, 197, 768)
    """

    def __init__(self, num_patches, hidden_dim, dropout_rate=0.0, quantized_sublayers=None, **kwargs):
        super().__init__(**kwargs)
        self._quantized = dict(quantized_sublayers or {})
        self.num_patches = check_positive_int("num_patches", num_patches)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.dropout_rate = check_rate("dropout_rate", dropout_rate)
        # The original patch embedding is a convolution with Flax's default
        # (LeCun normal) kernel initialiser.
        self.projection = keras.layers.Dense(
            hidden_dim,
            kernel_initializer="lecun_normal",
            dtype=self.dtype_policy,
            name="projection",
        )
        self.dropout_layer = keras.layers.Dropout(
            dropout_rate, dtype=self.dtype_policy, name="dropout"
        )
        # The int8 projection's kernel (`keras_vit.backend.int8_dense`).
        self.fast_kernels = backend.use_fast_kernels()

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "PatchEncoder expects flattened patches of shape (batch, "
                f"num_patches, patch_dim), received {tuple(input_shape)}."
            )
        if input_shape[1] is not None and input_shape[1] != self.num_patches:
            raise ValueError(
                f"PatchEncoder was created with num_patches={self.num_patches} "
                f"but received {input_shape[1]} patches "
                f"(input shape {tuple(input_shape)})."
            )
        self.projection.build(input_shape)
        self.class_token = self.add_weight(
            shape=(1, 1, self.hidden_dim),
            initializer="zeros",
            name="class_token",
        )
        self.position_embedding = self.add_weight(
            shape=(1, self.num_patches + 1, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position_embedding",
        )
        _quantize_sublayers(self, self._quantized)
        self.built = True

    def call(self, patches, training=None):
        tokens = backend.dense(self.projection, patches, training) if self.fast_kernels else self.projection(patches)
        batch_size = ops.shape(tokens)[0]
        class_token = ops.broadcast_to(
            ops.cast(self.class_token, tokens.dtype),
            (batch_size, 1, self.hidden_dim),
        )
        tokens = ops.concatenate([class_token, tokens], axis=1)
        tokens = tokens + ops.cast(self.position_embedding, tokens.dtype)
        return self.dropout_layer(tokens, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches + 1, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_patches": self.num_patches,
                "hidden_dim": self.hidden_dim,
                "dropout_rate": self.dropout_rate,
            }
        )
        config["quantized_sublayers"] = _quantized_sublayers(self) or None
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a residual branch per sample during training.

    Keras core has no per-sample stochastic depth, and keras-cv's
    `StochasticDepth` drops the branch for the whole batch at once; ViT
    training recipes (timm, big_vision) drop it per sample and rescale the
    survivors by `1 / (1 - rate)`, which is what this layer does.

    Args:
        rate: float in [0, 1), probability of dropping the branch.
        seed: optional int, seed of the random generator.
        **kwargs: standard layer arguments.

    Example:

    >>> layer = keras_vit.layers.DropPath(0.5, seed=0)
    >>> x = np.ones((4, 3, 2), "float32")
    >>> bool(np.all(layer(x, training=False) == x))
    True
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.seed = seed
        # Draws the masks on JAX and PyTorch; on TensorFlow it is kept so that
        # `.keras` files hold the same variables everywhere, and the mask is
        # drawn by TensorFlow's own random op (see `call`).
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        batch_size = ops.shape(inputs)[0]
        noise_shape = (batch_size,) + (1,) * (len(inputs.shape) - 1)
        if keras.backend.backend() == "tensorflow":
            # tf.random.uniform rather than keras.random.uniform with the
            # SeedGenerator: drawing from the generator assigns its state
            # variable at every call of every block, which slowed training
            # measurably. Its seeds come from TensorFlow's global seed, which
            # keras.utils.set_random_seed sets.
            import tensorflow as tf

            uniform = tf.random.uniform(noise_shape, seed=self.seed, dtype=inputs.dtype)
        else:
            # JAX and PyTorch: Keras' seeded generator (its state is part of
            # the traced step on JAX).
            uniform = keras.random.uniform(noise_shape, dtype=inputs.dtype, seed=self.seed_generator)
        mask = ops.floor(keep + uniform)
        return inputs * mask / ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class LayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis that owns its
    kernel choice.

    The same variables, config and values as Keras' layer (epsilon default
    1e-6, the original ViT's). Built while `keras_vit.backend.use_fast_kernels()`
    is True, its calls take the backend's fast kernels where they apply
    (see `keras_vit.backend`); otherwise Keras' own computation.

    Args:
        epsilon: float, added to the variance (1e-6 in the original ViT).
        **kwargs: the arguments of `keras.layers.LayerNormalization`.

    Example:

    >>> norm = keras_vit.layers.LayerNorm()
    >>> y = norm(np.array([[1.0, 2.0, 3.0]], "float32"))
    >>> np.round(np.asarray(y), 3)
    array([[-1.225,  0.   ,  1.225]], dtype=float32)
    """

    def __init__(self, epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)
        # The fast kernels normalise over the last axis with scale and centre.
        self.fast_kernels = (backend.use_fast_kernels() and self.axis in (-1, [-1])
                             and self.center and self.scale and not self.rms_scaling)

    def call(self, inputs, training=None):
        fast = backend.layer_norm(self, inputs, training) if self.fast_kernels else None
        return super().call(inputs) if fast is None else fast


@keras.saving.register_keras_serializable(package="keras_vit")
class TransformerBlock(keras.layers.Layer):
    """A pre-norm Transformer encoder block as in ViT.

    `x + DropPath(Dropout(MHA(LayerNorm(x))))`, then
    `x + DropPath(Dropout(Dense(Dropout(GELU(Dense(LayerNorm(x)))))))`,
    with LayerNorm epsilon 1e-6, q/k/v/output projections with biases,
    attention scaled by `1 / sqrt(hidden_dim / num_heads)` and the exact (erf)
    GELU, matching the original ViT weights as used by timm and Hugging Face.
    Built while `keras_vit.backend.use_fast_kernels()` is True, it takes
    the backend's fast kernels (same values; see `keras_vit.backend`).

    Sublayers, each called as a Keras layer: `norm1` and `norm2`
    (`keras_vit.layers.LayerNorm`), `attn` (`keras.layers.MultiHeadAttention`,
    whose q/k/v kernels have the Flax layout `(hidden_dim, num_heads,
    head_dim)`; with fast kernels on TensorFlow its attention is computed
    from its projections' kernels, LoRA included, unless they are
    quantized), `mlp_fc1`
    and `mlp_fc2` (`keras.layers.Dense`, applied to the tokens as one
    `(batch * tokens, hidden_dim)` matrix, which lets oneDNN fuse matmul,
    bias and GELU).

    Args:
        hidden_dim: int, the model width; must be divisible by `num_heads`.
        num_heads: int, number of attention heads.
        mlp_dim: int, width of the MLP's hidden layer.
        dropout_rate: float, dropout after the attention and in the MLP.
        attention_dropout_rate: float, dropout on the attention weights.
        drop_path_rate: float, stochastic depth rate of both residual
            branches.
        layer_norm_epsilon: float, LayerNorm epsilon (1e-6 in the original).
        quantized_sublayers: `{sublayer name: mode}` of sublayers that
            Keras' `quantize` changed, written by `get_config` so that a
            `.keras` file of a quantized model loads; not set by hand.
        **kwargs: standard layer arguments.

    Call arguments:
        inputs: `(batch, tokens, hidden_dim)`.
        training: bool, whether dropout and drop path are active.
        return_attention_scores: bool; if True, returns
            `(outputs, attention_weights)` with attention weights of shape
            `(batch, num_heads, tokens, tokens)` (rows sum to 1).
        class_token_only: bool; if True, computes the output of the first
            (class) token only, `(batch, 1, hidden_dim)`, attending to every
            token: the same values as `block(inputs)[:, :1]` for about a
            sixth of the block's arithmetic. The builders use it for the
            last block of a model that pools the class token, which
            discards the other tokens' outputs. Attention weights are then
            `(batch, num_heads, 1, tokens)`.

    Example:

    >>> block = keras_vit.layers.TransformerBlock(64, num_heads=4, mlp_dim=128)
    >>> outputs, weights = block(np.zeros((2, 5, 64), "float32"),
    ...                          return_attention_scores=True)
    >>> outputs.shape, weights.shape
    (TensorShape([2, 5, 64]), TensorShape([2, 4, 5, 5]))
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_dim,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        quantized_sublayers=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._quantized = dict(quantized_sublayers or {})
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim={hidden_dim} must be divisible by "
                f"num_heads={num_heads}."
            )
        self.dropout_rate = check_rate("dropout_rate", dropout_rate)
        self.attention_dropout_rate = check_rate(
            "attention_dropout_rate", attention_dropout_rate
        )
        self.drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
        if not isinstance(layer_norm_epsilon, (int, float)) or not (
            layer_norm_epsilon > 0
        ):
            raise ValueError(
                "layer_norm_epsilon must be a positive number, received "
                f"layer_norm_epsilon={layer_norm_epsilon!r}."
            )
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.head_dim = hidden_dim // num_heads

        policy = self.dtype_policy
        self.fast_kernels = backend.use_fast_kernels()
        norm_policy = _norm_policy(policy)
        self.norm1 = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=norm_policy, name="norm1")
        # The original initialises attention and MLP kernels with Xavier
        # uniform and MLP biases with N(0, 1e-6).
        self.attn = keras.layers.MultiHeadAttention(
            num_heads=num_heads,
            key_dim=self.head_dim,
            dropout=attention_dropout_rate,
            kernel_initializer="glorot_uniform",
            dtype=policy,
            name="attn",
        )
        # The attention weights' dropout of the fast attention path, which
        # computes `attn` from its variables.
        self.attn_weights_dropout = keras.layers.Dropout(
            attention_dropout_rate, dtype=policy, name="attn_weights_dropout"
        )
        self.attn_dropout = keras.layers.Dropout(
            dropout_rate, dtype=policy, name="attn_output_dropout"
        )
        self.norm2 = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=norm_policy, name="norm2")
        mlp_bias_init = keras.initializers.RandomNormal(stddev=1e-6)
        # The GELU is the block's (`_gelu`), so that training can take the
        # fused kernel; Keras' "gelu" is the exact (erf) GELU, as in timm.
        self.mlp_fc1 = keras.layers.Dense(
            mlp_dim,
            kernel_initializer="glorot_uniform",
            bias_initializer=mlp_bias_init,
            dtype=policy,
            name="mlp_fc1",
        )
        self.mlp_dropout1 = keras.layers.Dropout(
            dropout_rate, dtype=policy, name="mlp_dropout1"
        )
        self.mlp_fc2 = keras.layers.Dense(
            hidden_dim,
            kernel_initializer="glorot_uniform",
            bias_initializer=mlp_bias_init,
            dtype=policy,
            name="mlp_fc2",
        )
        self.mlp_dropout2 = keras.layers.Dropout(
            dropout_rate, dtype=policy, name="mlp_dropout2"
        )
        self.drop_path = DropPath(drop_path_rate, dtype=policy, name="drop_path")

    def build(self, input_shape):
        if len(input_shape) != 3 or (
            input_shape[-1] is not None and input_shape[-1] != self.hidden_dim
        ):
            raise ValueError(
                "TransformerBlock expects tokens of shape (batch, tokens, "
                f"{self.hidden_dim}), received {tuple(input_shape)}."
            )
        self.norm1.build(input_shape)
        self.attn.build(input_shape, input_shape)
        self.norm2.build(input_shape)
        self.mlp_fc1.build(input_shape)
        self.mlp_fc2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        # Built here too: a functional model is traced through
        # compute_output_shape, and Keras' quantize() refuses unbuilt layers.
        self.drop_path.build(input_shape)
        _quantize_sublayers(self, self._quantized)
        self.built = True

    def _attention(self, x, training, class_token_only):
        fast = backend.self_attention(self, x, training, class_token_only) if self.fast_kernels else None
        if fast is not None:
            return fast
        query = x[:, :1] if class_token_only else x
        return self.attn(query, x, return_attention_scores=True, training=training)

    def _gelu(self, x, training):
        fast = backend.gelu(x, training) if self.fast_kernels else None
        return keras.activations.gelu(x, approximate=False) if fast is None else fast

    def _dense(self, layer, x, training):
        return backend.dense(layer, x, training) if self.fast_kernels else layer(x)

    def _mlp(self, y, training):
        shape = ops.shape(y)
        y = self._dense(self.mlp_fc1, ops.reshape(y, (-1, self.hidden_dim)), training)
        y = self.mlp_dropout1(self._gelu(y, training), training=training)
        y = self.mlp_dropout2(self._dense(self.mlp_fc2, y, training), training=training)
        return ops.reshape(y, shape)

    def call(self, inputs, training=None, return_attention_scores=False, class_token_only=False):
        fused = backend.int8_block(self, inputs, training, class_token_only) if self.fast_kernels else None
        if fused is not None:
            return fused if return_attention_scores else fused[0]
        x, scores = self._attention(self.norm1(inputs, training=training), training, class_token_only)
        x = self.attn_dropout(x, training=training)
        if class_token_only:
            inputs = inputs[:, :1]
        x = inputs + self.drop_path(x, training=training)

        y = self._mlp(self.norm2(x, training=training), training)
        outputs = x + self.drop_path(y, training=training)
        if return_attention_scores:
            return outputs, scores
        return outputs

    def compute_output_shape(self, input_shape, class_token_only=False):
        if class_token_only:
            return (input_shape[0], 1, input_shape[2])
        return tuple(input_shape)

    def compute_output_spec(self, inputs, training=None, return_attention_scores=False,
                            class_token_only=False):
        queries = 1 if class_token_only else inputs.shape[1]
        outputs = keras.KerasTensor(
            (inputs.shape[0], queries, inputs.shape[2]), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return outputs
        scores = keras.KerasTensor(
            (inputs.shape[0], self.num_heads, queries, inputs.shape[1]), dtype=self.compute_dtype
        )
        return outputs, scores

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        config["quantized_sublayers"] = _quantized_sublayers(self) or None
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class ClassTokenPooling(keras.layers.Layer):
    """Takes the class token (the first token) as the image representation.

    Input shape: `(batch, tokens, hidden_dim)`. Output: `(batch, hidden_dim)`.

    Example:

    >>> tokens = np.arange(12, dtype="float32").reshape(1, 3, 4)
    >>> keras_vit.layers.ClassTokenPooling()(tokens).numpy()
    array([[0., 1., 2., 3.]], dtype=float32)
    """

    def call(self, tokens):
        return tokens[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchTokenAveragePooling(keras.layers.Layer):
    """Averages the patch tokens, leaving out the class token.

    Input shape: `(batch, tokens, hidden_dim)`. Output: `(batch, hidden_dim)`.

    Example:

    >>> tokens = np.arange(12, dtype="float32").reshape(1, 3, 4)
    >>> keras_vit.layers.PatchTokenAveragePooling()(tokens).numpy()
    array([[6., 7., 8., 9.]], dtype=float32)
    """

    def call(self, tokens):
        return ops.mean(tokens[:, 1:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="keras_vit")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors images left to right, always (the test-time flip).

    Keras' `RandomFlip("horizontal")` flips at random and only in training;
    test-time augmentation needs the mirror image of every input, at
    inference, and a layer (not a `Lambda`) so that the model saves and
    loads in safe mode. Input shape: `(batch, height, width, channels)`.

    Example:

    >>> images = np.arange(6, dtype="float32").reshape(1, 1, 3, 2)
    >>> keras_vit.layers.HorizontalFlip()(images).numpy()[0, 0]
    array([[4., 5.],
           [2., 3.],
           [0., 1.]], dtype=float32)
    """

    def call(self, images):
        if len(images.shape) != 4:
            raise ValueError(
                f"HorizontalFlip expects images of shape (batch, height, width, channels), "
                f"received shape {tuple(images.shape)}."
            )
        return ops.flip(images, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape
