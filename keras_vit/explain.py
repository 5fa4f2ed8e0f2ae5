"""See what a ViT sees: attention maps, attention rollout, overlays, and the
learned embeddings (position-embedding similarity, patch-embedding filters).

    maps = keras_vit.explain.attention_maps(model, images)     # per block: (batch, heads, tokens, tokens)
    mask = keras_vit.explain.attention_rollout(model, images)  # (batch, grid_h, grid_w)
    picture = keras_vit.explain.overlay(image, mask[0])        # RGB uint8

Everything works on any keras_vit model (built, trained or loaded from
`.keras`) at its own input size, without rebuilding or changing the model:
the maps come from the model's own layers, the class-token row of each
block's attention weights being what the classification reads.
"""

import numpy as np

from keras_vit import models
from keras_vit._validation import check_choice, check_int, check_rate

HEAD_FUSIONS = ("mean", "max", "min")


# ---------------------------------------------------------------------------
# Attention weights
# ---------------------------------------------------------------------------


def _blocks(model):
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, received {type(model).__name__}.")
    blocks = models.get_blocks(model)
    if not blocks:
        raise ValueError(f"The model {model.name!r} has no TransformerBlock layers: is it a keras_vit model?")
    for previous, block in zip(blocks, blocks[1:]):
        if block.input is not previous.output:
            raise ValueError(
                f"The model's blocks are not a chain: {block.name} does not take {previous.name}'s output."
            )
    return blocks


def _scale_to_max(maps):
    """Each map of a batch divided by its maximum (all zeros stay zeros)."""
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, *([1] * (maps.ndim - 1)))
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def _square_grid(tokens):
    side = int(round(np.sqrt(tokens)))
    if side * side != tokens:
        raise ValueError(f"{tokens} patch tokens are not a square grid; pass grid=(grid_h, grid_w).")
    return side, side


def _attention_function(model):
    """A function images -> [per-block attention weights as NumPy arrays],
    cached on the model; compiled by `tf.function` on TensorFlow, eager on
    the other backends."""
    import keras

    cached = getattr(model, "_keras_vit_attention_fn", None)
    if cached is not None:
        return cached
    blocks = _blocks(model)
    tokens_in = keras.Model(model.inputs[0], blocks[0].input, name=f"{model.name}_tokens")

    def attention(images):
        x = tokens_in(images, training=False)
        weights = []
        for block in blocks:
            x, w = block(x, training=False, return_attention_scores=True)
            weights.append(keras.ops.cast(w, "float32"))
        return weights

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        attention = tf.function(attention, reduce_retracing=True)

    def function(batch):
        return [keras.ops.convert_to_numpy(w) for w in attention(batch)]

    # Not tracked by Keras (a plain attribute on the Python object).
    object.__setattr__(model, "_keras_vit_attention_fn", function)
    return function


def _to_pixels(image, image_size):
    """`keras_vit.images.to_pixels` in `keras.ops`, for any backend: float32
    RGB (grayscale repeated, alpha dropped) resized bilinearly without
    antialiasing to `image_size`, clipped to [0, 255]."""
    import keras

    image = np.asarray(image, dtype=np.float32)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    if image.shape[-3:-1] != tuple(image_size):
        resized = keras.ops.image.resize(image, tuple(image_size), interpolation="bilinear", antialias=False)
        image = np.clip(keras.ops.convert_to_numpy(resized), 0.0, 255.0)
    return image


def _as_images(model, images):
    height, width = model.inputs[0].shape[1:3]
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"images must be (batch, height, width, channels) or one (height, width, channels) image "
            f"with 1, 3 or 4 channels, received shape {images.shape}."
        )
    if images.shape[1:3] != (height, width) or images.shape[-1] != 3:
        images = np.stack([_to_pixels(im, (height, width)) for im in images])
    return images.astype("float32")


def attention_maps(model, images, batch_size=32):
    """The attention weights of every block.

    Args:
        model: a keras_vit model (any input size; built, trained or loaded).
        images: `(batch, height, width, channels)` or one image, in the
            model's input range; resized to the model's input size if needed.
        batch_size: images per forward pass.

    Returns:
        A list with one float32 array per block, each
        `(batch, heads, tokens, tokens)`; rows sum to 1. Token 0 is the class
        token, then the patches in row-major order.
    """
    check_int("batch_size", batch_size)
    function = _attention_function(model)
    images = _as_images(model, images)
    chunks = [function(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return [np.concatenate([chunk[b] for chunk in chunks]) for b in range(len(chunks[0]))]


def attention_rollout(model_or_maps, images=None, head_fusion="mean", discard_ratio=0.0,
                      grid=None):
    """Attention rollout (Abnar & Zuidema, 2020): how much each patch flows
    into the class token through all blocks.

    For each block the heads are fused (`mean`, `max` or `min`), optionally
    the lowest `discard_ratio` of the attentions (never the class token's
    own) are set to zero, the identity is added for the residual connection,
    rows are re-normalised, and the matrices are multiplied from the first
    block to the last.

    Args:
        model_or_maps: a keras_vit model (then `images` is required), or the
            list of attention weights `attention_maps` returns.
        images: images for the model.
        head_fusion: `"mean"`, `"max"` or `"min"`.
        discard_ratio: fraction in [0, 1) of each fused matrix's lowest
            entries to drop.
        grid: `(grid_h, grid_w)` of the patches; taken from the model, or
            square by default for maps.

    Returns:
        A float32 array `(batch, grid_h, grid_w)`, each map scaled so that its
        maximum is 1 (all zeros if nothing flows from the patches).
    """
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    check_rate("discard_ratio", discard_ratio)
    if isinstance(model_or_maps, (list, tuple)):
        maps = [np.asarray(m, dtype=np.float64) for m in model_or_maps]
    else:
        if images is None:
            raise ValueError("attention_rollout(model, images): images are required with a model.")
        maps = [m.astype(np.float64) for m in attention_maps(model_or_maps, images)]
        grid = grid or models.patch_grid(model_or_maps)
    if not maps or any(m.ndim != 4 or m.shape[-1] != m.shape[-2] or m.shape != maps[0].shape for m in maps):
        raise ValueError("maps must be a non-empty list of equal (batch, heads, tokens, tokens) arrays.")
    batch, _, tokens, _ = maps[0].shape
    grid = grid or _square_grid(tokens - 1)
    if grid[0] * grid[1] != tokens - 1:
        raise ValueError(f"grid={tuple(grid)} does not hold the {tokens - 1} patch tokens.")
    identity = np.eye(tokens)
    result = np.broadcast_to(identity, (batch, tokens, tokens)).copy()
    for weights in maps:
        fused = getattr(np, head_fusion)(weights, axis=1)
        if discard_ratio > 0:
            flat = fused.reshape(batch, -1).copy()
            count = int(flat.shape[1] * discard_ratio)
            lowest = np.argsort(flat, axis=1, kind="stable")[:, :count]
            for row, indices in zip(flat, lowest):
                row[indices[indices != 0]] = 0.0  # index 0: class token to itself, kept
            fused = flat.reshape(fused.shape)
        fused = fused + identity
        fused = fused / fused.sum(axis=-1, keepdims=True)
        result = fused @ result
    return _scale_to_max(result[:, 0, 1:].reshape(batch, *grid)).astype(np.float32)


def class_token_attention(model_or_maps, images=None, layer=-1, head=None, grid=None):
    """One block's attention from the class token to the patches.

    Args:
        layer: the block (negative counts from the last).
        head: one head, or `None` for the mean over heads.

    Returns:
        `(batch, grid_h, grid_w)`, scaled to a maximum of 1.
    """
    if isinstance(model_or_maps, (list, tuple)):
        maps = list(model_or_maps)
    else:
        maps = attention_maps(model_or_maps, images)
        grid = grid or models.patch_grid(model_or_maps)
    if not isinstance(layer, int) or not -len(maps) <= layer < len(maps):
        raise ValueError(f"layer must be in [{-len(maps)}, {len(maps) - 1}], received layer={layer!r}.")
    weights = np.asarray(maps[layer])
    heads = weights.shape[1]
    if head is not None and (not isinstance(head, int) or not 0 <= head < heads):
        raise ValueError(f"head must be in [0, {heads - 1}] or None, received head={head!r}.")
    row = weights[:, head, 0, 1:] if head is not None else weights[:, :, 0, 1:].mean(axis=1)
    grid = grid or _square_grid(row.shape[1])
    return _scale_to_max(row.reshape(len(row), *grid)).astype(np.float32)


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------


def overlay(image, mask, alpha=0.5, colormap="inferno"):
    """Blends a heat map over an image.

    Args:
        image: `(height, width, 3)` or `(height, width)` pixels in [0, 255].
        mask: `(grid_h, grid_w)` values in [0, 1], resized (bilinear) to the
            image.
        alpha: weight of the heat map.
        colormap: a matplotlib colormap name.

    Returns:
        An RGB uint8 array of the image's size.
    """
    import keras
    import matplotlib

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be (height, width[, channels]), received shape {image.shape}.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (grid_h, grid_w), received shape {mask.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], received alpha={alpha!r}.")
    resized = keras.ops.convert_to_numpy(
        keras.ops.image.resize(mask[..., None], image.shape[:2], interpolation="bilinear"))[..., 0]
    heat = matplotlib.colormaps[colormap](np.clip(resized, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * np.clip(image, 0, 255) + alpha * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attention(images, masks, png_path, titles=None, heading=None, colormap="inferno"):
    """Writes a PNG grid: one row per image with the image, the heat map (with
    a colour bar) and the overlay."""
    plt = _pyplot()
    images = [np.asarray(im) for im in images]
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(9.5, 3.2 * rows + 0.7), squeeze=False, layout="constrained")
    for i, (image, mask) in enumerate(zip(images, masks)):
        shown = np.clip(image, 0, 255).astype(np.uint8)
        axes[i, 0].imshow(shown if shown.shape[-1] == 3 else shown[..., 0], cmap=None if shown.shape[-1] == 3 else "gray")
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=9)
        heat = axes[i, 1].imshow(mask, cmap=colormap, vmin=0.0, vmax=1.0)
        axes[i, 1].set_title("attention (max = 1)", fontsize=9)
        axes[i, 1].set_xlabel("patch column")
        axes[i, 1].set_ylabel("patch row")
        rows, cols = np.shape(mask)
        axes[i, 1].set_xticks(range(0, cols, max(1, cols // 8)))
        axes[i, 1].set_yticks(range(0, rows, max(1, rows // 8)))
        fig.colorbar(heat, ax=axes[i, 1], fraction=0.046, pad=0.04)
        axes[i, 2].imshow(overlay(image, mask, colormap=colormap))
        axes[i, 2].set_title("overlay", fontsize=9)
        for ax in (axes[i, 0], axes[i, 2]):
            ax.set_xticks([])
            ax.set_yticks([])
    if heading:
        fig.suptitle(heading, fontsize=10)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return str(png_path)


def position_embedding_similarity(model):
    """Cosine similarity of each patch's position embedding with every other
    one: `(grid_h, grid_w, grid_h, grid_w)` (Figure 7 of the ViT paper)."""
    encoder = models.get_part(model, "patch_encoder")
    if encoder is None:
        raise ValueError(f"The model {model.name!r} has no PatchEncoder layer.")
    import keras

    embedding = keras.ops.convert_to_numpy(encoder.position_embedding).astype(np.float64)[0, 1:]
    grid = models.patch_grid(model)
    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=-1, keepdims=True), 1e-12)
    return (unit @ unit.T).reshape(*grid, *grid).astype(np.float32)


def patch_embedding_components(model, count=28, grayscale=False):
    """The first principal components of the patch-embedding filters, as
    `(count, patch, patch, 3)` images scaled to [0, 1] each (Figure 7 of the
    ViT paper), and the fraction of variance each explains.

    With `grayscale=True` (a model trained on grayscale images, whose three
    input channels are always equal, so only their sum matters), the filters
    are summed over the channels first and the pictures are gray.
    """
    encoder = models.get_part(model, "patch_encoder")
    patches = models.get_part(model, "patches")
    if encoder is None or patches is None:
        raise ValueError(f"The model {model.name!r} has no Patches/PatchEncoder layers.")
    import keras

    kernel = keras.ops.convert_to_numpy(encoder.projection.kernel).astype(np.float64)  # (p*p*3, width)
    size = patches.patch_size
    if grayscale:
        kernel = kernel.reshape(size * size, -1, kernel.shape[-1]).sum(axis=1)
    filters = kernel.T - kernel.T.mean(axis=0, keepdims=True)  # one row per filter
    _, singular, components = np.linalg.svd(filters, full_matrices=False)
    count = min(count, len(components))
    variance = singular**2 / max(np.sum(singular**2), 1e-30)
    pictures = components[:count].reshape(count, size, size, -1)
    if grayscale:
        pictures = np.repeat(pictures, 3, axis=-1)
    low = pictures.min(axis=(1, 2, 3), keepdims=True)
    high = pictures.max(axis=(1, 2, 3), keepdims=True)
    pictures = (pictures - low) / np.maximum(high - low, 1e-12)
    return pictures.astype(np.float32), variance[:count].astype(np.float32)


def plot_position_embedding_similarity(model, png_path):
    """Writes the position-embedding similarity grid as a PNG: for each
    patch position (row, column), its cosine similarity with all others."""
    plt = _pyplot()
    similarity = position_embedding_similarity(model)
    rows, cols = similarity.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 1.2, 1.1 * rows + 0.6), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            image = axes[r, c].imshow(similarity[r, c], cmap="viridis", vmin=-1.0, vmax=1.0)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(str(r + 1), fontsize=8)
            if r == rows - 1:
                axes[r, c].set_xlabel(str(c + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.suptitle("Position embedding similarity (cosine)")
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="cosine similarity")
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return str(png_path)


def plot_patch_embedding_components(model, png_path, count=28, grayscale=False):
    """Writes the first principal components of the patch-embedding filters
    as a PNG grid, each titled with its share of the variance."""
    plt = _pyplot()
    pictures, variance = patch_embedding_components(model, count, grayscale=grayscale)
    cols = min(7, len(pictures))
    rows = int(np.ceil(len(pictures) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.3 * cols, 5.0), 1.45 * rows + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(pictures):
            ax.imshow(pictures[i], interpolation="nearest")
            ax.set_title(f"PC{i + 1} {100 * variance[i]:.0f}%", fontsize=7)
        else:
            ax.axis("off")
    fig.suptitle("Patch-embedding filters: principal components\n(share of variance"
                 + (", colour channels summed)" if grayscale else ")"), fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return str(png_path)
