"""The ViT training recipe, in plain Keras: `compile` and `augmentation`.

- AdamW with decoupled weight decay, not applied to biases, LayerNorm
  scales/offsets, the class token and the position embedding;
- linear warm-up then cosine decay of the learning rate;
- global-norm gradient clipping; label smoothing;
- augmentation with Keras' image layers (RandAugment, MixUp, CutMix, random
  resized crop, flip), mapped over tf.data batches.

The augmentation layers are Keras 3's own (`keras.layers.RandAugment`,
`MixUp`, `CutMix`, ...): they are keras-cv's layers moved into Keras, and
keras-cv 0.9 itself no longer runs its MixUp on Keras 3.15 inputs.
"""

import keras
import numpy as np

from keras_vit import models
from keras_vit._validation import check_rate


# Variables that are not decayed, matched against variable names.
NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "class_token", "position_embedding")


def _schedule(learning_rate, steps, warmup_steps):
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be the positive number of training steps, received steps={steps!r}.")
    if warmup_steps is None:
        warmup_steps = min(steps // 10, 10_000)
    if not 0 <= warmup_steps < steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} must be in [0, steps={steps})."
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=steps - warmup_steps,
        alpha=0.0,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package="keras_vit")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose TensorFlow update runs fused kernels.

    Same arguments, same state variables and the same numbers as Keras'
    AdamW (tests/test_training.py compares the two step by step). Keras
    applies Adam as about a dozen TensorFlow ops per variable (casts, powers,
    squares, square roots, three assignments) and, for the weight decay,
    evaluates the learning-rate schedule again for every variable; on a CPU
    those small ops are a visible part of a small model's training step
    (BENCHMARKS.md).
    Here the schedule, the bias corrections and the decay factor are
    computed once a step, and each variable is updated by TensorFlow's own
    fused kernels: `ResourceApplyGradientDescent` for the decoupled decay
    (`var -= lr * wd * var`) and `ResourceApplyAdam` for Adam (the same
    formula as Keras' `Adam.update_step`), one op each. Keras 3 has no fused
    optimizer of its own for TensorFlow, hence this subclass.

    Other backends, `amsgrad=True` and sparse (`IndexedSlices`) gradients
    take Keras' own update. Works under any `tf.distribute` strategy, as
    Keras' does (each replica's copy updated in `strategy.extended.update`).

    Unlike Keras' AdamW, the names given to `exclude_from_weight_decay(
    var_names=...)` are part of the config (`exclude_from_weight_decay_names`),
    so a model saved with this optimizer and loaded again to go on training
    still leaves them undecayed; Keras' config drops them and the reloaded
    optimizer decays every variable.
    """

    def __init__(self, *args, exclude_from_weight_decay_names=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._no_decay_names = []
        if exclude_from_weight_decay_names:
            self.exclude_from_weight_decay(var_names=exclude_from_weight_decay_names)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self._no_decay_names = sorted(set(var_names or ()))

    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay_names"] = list(self._no_decay_names)
        return config

    def _fused(self):
        return keras.backend.backend() == "tensorflow" and not self.amsgrad

    def _apply_weight_decay(self, variables):
        if not self._fused():
            return super()._apply_weight_decay(variables)
        # Keras calls this right before `_backend_update_step`, in every path
        # (with and without gradient accumulation); the fused path decays
        # each variable there, just before its Adam update, with the
        # learning rate handed to that call: the schedule is evaluated once a
        # step, where Keras evaluates it again for every variable.

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fused():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        trainable_variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        # Once a step, where Keras computes them for every variable; in the
        # replica context, and handed to `update` as arguments, so that each
        # replica's copy gets its own replica's values.
        step = tf.cast(self.iterations + 1, tf.float32)
        constants = {
            "lr": tf.cast(learning_rate, tf.float32),
            "beta1_power": tf.pow(tf.cast(self.beta_1, tf.float32), step),
            "beta2_power": tf.pow(tf.cast(self.beta_2, tf.float32), step),
            "beta1": tf.cast(self.beta_1, tf.float32),
            "beta2": tf.cast(self.beta_2, tf.float32),
            "epsilon": tf.cast(self.epsilon, tf.float32),
        }
        decay = None if self.weight_decay is None else constants["lr"] * tf.cast(self.weight_decay, tf.float32)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._fused_update_step, self._distribution_strategy, grads_and_vars, constants, decay
        )

    def _fused_update_step(self, distribution, grads_and_vars, constants, decay):
        import tensorflow as tf

        def update(variable, gradient, constants, decay):
            dtype = variable.dtype
            if decay is not None and self._use_weight_decay(variable):
                tf.raw_ops.ResourceApplyGradientDescent(
                    var=variable.handle, alpha=tf.cast(decay, dtype), delta=tf.convert_to_tensor(variable)
                )
            if isinstance(gradient, tf.IndexedSlices):
                return self.update_step(gradient, variable, constants["lr"])
            index = self._get_variable_index(variable)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=self._momentums[index].value.handle,
                v=self._velocities[index].value.handle,
                grad=tf.cast(gradient, dtype),
                **{name: tf.cast(value, dtype) for name, value in constants.items()},
            )

        for gradient, variable in grads_and_vars:
            distribution.extended.update(variable, update, args=(gradient, constants, decay), group=False)


def optimizer(steps, learning_rate=1e-3, weight_decay=0.05, warmup_steps=None, clipnorm=1.0,
              beta_2=0.999):
    """AdamW with the ViT schedule, clipping and weight-decay exclusions.

    Args:
        steps: total number of optimizer steps (epochs x steps per epoch).
        learning_rate: peak learning rate, reached after the warm-up.
        weight_decay: decoupled weight decay.
        warmup_steps: linear warm-up steps; default 10% of `steps`.
        clipnorm: global-norm gradient clipping threshold (`None`: off).
        beta_2: Adam's second-moment decay.

    Returns:
        A `keras_vit.training.AdamW` (Keras' AdamW with fused TensorFlow
        updates, same numbers).

    Example:

    >>> opt = keras_vit.training.optimizer(steps=1000, learning_rate=1e-3)
    >>> float(opt.learning_rate)  # step 0 of the warm-up
    0.0
    """
    opt = AdamW(
        learning_rate=_schedule(learning_rate, steps, warmup_steps),
        weight_decay=weight_decay,
        beta_2=beta_2,
        global_clipnorm=clipnorm,
    )
    # Plain substrings, as Keras documents: its TensorFlow backend matches
    # them against the underlying tf.Variable's name ("bias:0"), so anchored
    # patterns would silently exclude nothing.
    opt.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return opt


def compile(model, steps, learning_rate=1e-3, weight_decay=0.05, warmup_steps=None,
            label_smoothing=0.1, clipnorm=1.0, jit_compile="auto"):
    """Compiles `model` with the ViT recipe for one-hot labels.

    Mixed precision follows the global dtype policy: under `mixed_float16`
    Keras scales the loss itself.

    Args:
        model: a keras_vit classifier (softmax output).
        steps: total optimizer steps of the run.
        learning_rate, weight_decay, warmup_steps, clipnorm: see `optimizer`.
        label_smoothing: label smoothing of the cross-entropy.
        jit_compile: XLA compilation (`"auto"`, True, False).

    Returns:
        The model, compiled.
    """
    model.compile(
        optimizer=optimizer(steps, learning_rate, weight_decay, warmup_steps, clipnorm),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        # Weighted: rows of weight 0 (keras_vit.distribute.pad_batches) do
        # not count; without sample weights it is the plain accuracy.
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model


def freeze_backbone(model):
    """Makes everything but the head (and pre-logits) untrainable.

    Returns:
        The names of the layers left trainable.
    """
    top = {id(models.get_part(model, name)) for name in ("head", "pre_logits")}
    trainable = []
    for layer in model.layers:
        layer.trainable = id(layer) in top
        if layer.trainable:
            trainable.append(layer.name)
    return trainable


def mixed_precision_policy():
    """The 16-bit Keras policy for this machine: `"mixed_float16"` when the
    backend computes on a GPU, else `"mixed_bfloat16"` (CPU, TPU)."""
    return "mixed_float16" if _gpu() else "mixed_bfloat16"


def _gpu():
    """Whether Keras' backend computes on a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def augmentation(flip=True, crop_scale=None, rand_augment=0.0, mixup=0.0, cutmix=0.0,
                 seed=None, random_erasing=0.0, translate=0.0):
    """Builds the training augmentation, a function for `tf.data` `map`.

    It takes a batch `(images, one_hot_labels)` with images in [0, 255] and
    returns the augmented batch.

    Every layer keeps the input size.

    Args:
        flip: random horizontal flips.
        crop_scale: random resized crop, keeping at least this fraction of
            each side (e.g. 0.8), by zooming in and translating; `None`: off.
        translate: random translation by up to this fraction of the height
            and of the width (`keras.layers.RandomTranslation`), by whole
            pixels (nearest-neighbour sampling: no blur), the uncovered
            border filled with zeros, as torchvision's
            `RandomAffine(degrees=0, translate=(t, t))`; 0: off.
        rand_augment: RandAugment strength in [0, 1] (0: off), two ops per
            image.
        random_erasing: probability in [0, 1] that an image gets a random
            rectangle (2-33% of its area) replaced by noise (Zhong et al.,
            2017; `keras.layers.RandomErasing`), after the other image
            layers; 0: off.
        mixup: MixUp alpha (0: off).
        cutmix: CutMix factor (0: off). With both MixUp and CutMix, each
            batch gets one of them at random.
        seed: seed of the random layers.

    Returns:
        A function `(images, labels) -> (images, labels)`.
    """
    image_layers = []
    if check_rate("translate", translate):
        image_layers.append(keras.layers.RandomTranslation(
            translate, translate, fill_mode="constant", fill_value=0.0, interpolation="nearest",
            seed=seed,
        ))
    if crop_scale is not None:
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], received crop_scale={crop_scale!r}.")
        image_layers += [
            keras.layers.RandomZoom((-(1.0 - crop_scale), 0.0), fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(
                (1.0 - crop_scale) / 2, (1.0 - crop_scale) / 2, fill_mode="reflect", seed=seed
            ),
        ]
    if flip:
        image_layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if rand_augment:
        if not 0.0 < rand_augment <= 1.0:
            raise ValueError(f"rand_augment must be in [0, 1], received rand_augment={rand_augment!r}.")
        image_layers.append(
            keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=rand_augment, seed=seed)
        )
    if random_erasing:
        if not 0.0 < random_erasing <= 1.0:
            raise ValueError(
                f"random_erasing must be in [0, 1], received random_erasing={random_erasing!r}."
            )
        image_layers.append(keras.layers.RandomErasing(
            factor=(random_erasing, random_erasing), value_range=(0, 255), seed=seed
        ))
    mixers = []
    if mixup:
        mixers.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix:
        mixers.append(keras.layers.CutMix(factor=cutmix, seed=seed))

    # Which of MixUp and CutMix a batch gets, where the batches are NumPy
    # (keras_vit.data.ArrayBatches); in tf.data's map the choice is a graph op.
    choices = np.random.default_rng(seed)

    def augment(images, labels):
        for layer in image_layers:
            images = layer(images, training=True)
        if not mixers:
            return images, labels
        in_graph = _is_tf_tensor(images)
        if in_graph:
            import tensorflow as tf  # tf.data's map: its graph ops
            cast = tf.cast
        else:
            cast = keras.ops.cast

        def mix(layer):
            def apply():
                out = layer({"images": images, "labels": labels}, training=True)
                return cast(out["images"], images.dtype), cast(out["labels"], labels.dtype)
            return apply

        if len(mixers) == 1:
            return mix(mixers[0])()
        if not in_graph:
            return mix(mixers[int(choices.random() >= 0.5)])()
        choice = tf.random.uniform((), seed=seed) < 0.5
        return tf.cond(choice, mix(mixers[0]), mix(mixers[1]))

    return augment


def _is_tf_tensor(value):
    """Whether `value` is a TensorFlow tensor (TensorFlow imported only when
    it already is: a JAX or PyTorch user may not have it)."""
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.Tensor)
