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
import tensorflow as tf


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
        A `keras.optimizers.AdamW`.

    Example:

    >>> opt = keras_vit.training.optimizer(steps=1000, learning_rate=1e-3)
    >>> float(opt.learning_rate)  # step 0 of the warm-up
    0.0
    """
    opt = keras.optimizers.AdamW(
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
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model


def freeze_backbone(model):
    """Makes everything but the head (and pre-logits) untrainable.

    Returns:
        The names of the layers left trainable.
    """
    trainable = []
    for layer in model.layers:
        layer.trainable = layer.name in ("head", "pre_logits")
        if layer.trainable:
            trainable.append(layer.name)
    return trainable


def mixed_precision_policy():
    """The 16-bit Keras policy for this machine: `"mixed_float16"` when
    TensorFlow sees a GPU, else `"mixed_bfloat16"` (CPU, TPU)."""
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def augmentation(flip=True, crop_scale=None, rand_augment=0.0, mixup=0.0, cutmix=0.0,
                 seed=None, random_erasing=0.0):
    """Builds the training augmentation, a function for `tf.data` `map`.

    It takes a batch `(images, one_hot_labels)` with images in [0, 255] and
    returns the augmented batch.

    Every layer keeps the input size.

    Args:
        flip: random horizontal flips.
        crop_scale: random resized crop, keeping at least this fraction of
            each side (e.g. 0.8), by zooming in and translating; `None`: off.
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

    def augment(images, labels):
        for layer in image_layers:
            images = layer(images, training=True)
        if not mixers:
            return images, labels

        def mix(layer):
            def apply():
                out = layer({"images": images, "labels": labels}, training=True)
                return tf.cast(out["images"], images.dtype), tf.cast(out["labels"], labels.dtype)
            return apply

        if len(mixers) == 1:
            return mix(mixers[0])()
        choice = tf.random.uniform((), seed=seed) < 0.5
        return tf.cond(choice, mix(mixers[0]), mix(mixers[1]))

    return augment
