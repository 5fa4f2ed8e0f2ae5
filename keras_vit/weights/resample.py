"""Resampling a position embedding to another grid of patches, with the
interpolation weights of PyTorch's `F.interpolate` so that the result matches
timm's `resample_abs_pos_embed`."""

import numpy as np

from keras_vit._validation import check_choice

INTERPOLATIONS = ("bilinear", "bicubic")


def _cubic(x, a):
    x = np.abs(x)
    return np.where(
        x <= 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        np.where(x < 2.0, ((x - 5.0) * x + 8.0) * x * a - 4.0 * a, 0.0),
    )


def _interpolation_matrix(in_size, out_size, interpolation, antialias):
    """The (out_size, in_size) matrix of PyTorch's `F.interpolate` in 1-D.

    Written out rather than calling `tf.image.resize` because TensorFlow's
    bicubic kernel uses a = -0.5 and other edge handling than PyTorch's
    (a = -0.75 without antialiasing): matching timm's resampling to float
    precision needs PyTorch's exact weights (align_corners=False).
    """
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    if antialias:
        interp_size = 2 if interpolation == "bilinear" else 4
        support = interp_size / 2 * (scale if scale >= 1.0 else 1.0)
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size)
            j = np.arange(xmin, xmax)
            x = (j - center + 0.5) * invscale
            if interpolation == "bilinear":
                w = np.maximum(0.0, 1.0 - np.abs(x))
            else:  # PIL's bicubic, which PyTorch's antialiased mode follows
                w = _cubic(x, -0.5)
            total = w.sum()
            matrix[i, xmin:xmax] = w / total if total != 0 else w
        return matrix
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        if interpolation == "bilinear":
            src = max(src, 0.0)
            i0 = int(src)
            i1 = min(i0 + 1, in_size - 1)
            lam = src - i0
            matrix[i, i0] += 1.0 - lam
            matrix[i, i1] += lam
        else:
            i0 = int(np.floor(src))
            t = src - i0
            coeffs = _cubic(np.array([t + 1.0, t, 1.0 - t, 2.0 - t]), -0.75)
            for offset, c in zip(range(-1, 3), coeffs):
                matrix[i, min(max(i0 + offset, 0), in_size - 1)] += c
    return matrix


def resample_position_embedding(
    position_embedding,
    new_grid,
    old_grid=None,
    num_prefix_tokens=1,
    interpolation="bilinear",
    antialias=False,
):
    """Resamples a ViT position embedding to another grid of patches.

    As timm and vit_jax do: the class token's embedding is kept, the rest is
    reshaped to its 2-D grid, interpolated to `new_grid` and flattened again.
    The interpolation weights are PyTorch's `F.interpolate` weights
    (`align_corners=False`), so the result equals timm's
    `resample_abs_pos_embed` with the same `interpolation` and `antialias`.
    The defaults (bilinear, no antialiasing) are those of timm's loader for
    Google `.npz` checkpoints.

    Args:
        position_embedding: array of shape `(1, num_prefix_tokens + h * w, D)`.
        new_grid: `(new_h, new_w)`, the target grid of patches.
        old_grid: `(h, w)`; inferred as a square grid when `None`.
        num_prefix_tokens: number of leading tokens (class token) to keep.
        interpolation: `"bilinear"` or `"bicubic"`.
        antialias: whether to use PyTorch's antialiased kernels (as timm's
            `checkpoint_filter_fn` does for state dicts).

    Returns:
        A float32 array of shape `(1, num_prefix_tokens + new_h * new_w, D)`.

    Example:

    >>> embedding = np.random.default_rng(0).normal(size=(1, 197, 8))
    >>> keras_vit.resample_position_embedding(embedding, (24, 24)).shape
    (1, 577, 8)
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    embedding = np.asarray(position_embedding, dtype=np.float32)
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise ValueError(
            "position_embedding must have shape (1, tokens, hidden_dim), "
            f"received {embedding.shape}."
        )
    prefix, grid = embedding[:, :num_prefix_tokens], embedding[0, num_prefix_tokens:]
    if old_grid is None:
        side = int(round(np.sqrt(grid.shape[0])))
        if side * side != grid.shape[0]:
            raise ValueError(
                f"position_embedding holds {grid.shape[0]} grid tokens after "
                f"{num_prefix_tokens} prefix token(s), which is not a square "
                "grid: pass old_grid=(height, width)."
            )
        old_grid = (side, side)
    old_h, old_w = old_grid
    new_h, new_w = new_grid
    if old_h * old_w != grid.shape[0]:
        raise ValueError(
            f"old_grid={tuple(old_grid)} needs {old_h * old_w} tokens, "
            f"position_embedding has {grid.shape[0]}."
        )
    grid = grid.reshape(old_h, old_w, -1).astype(np.float64)
    rows = _interpolation_matrix(old_h, new_h, interpolation, antialias)
    cols = _interpolation_matrix(old_w, new_w, interpolation, antialias)
    resized = np.einsum("ih,jw,hwd->ijd", rows, cols, grid)
    resized = resized.reshape(1, new_h * new_w, -1).astype(np.float32)
    return np.concatenate([prefix, resized], axis=1)
