"""Decoding images, and the checks that make untrusted image files safe to read.

Every path that turns encoded bytes into model input goes through
`decode_image`: training folders (`keras_vit.data`), `load_images`
(`keras-vit predict`, `explain`), and the exported serving signature
(`keras_vit.export`). It reads the pixel count an image's header declares
(`image_pixels`) and refuses more than `max_pixels` before anything is
decoded, so a small file cannot decode to gigabytes.

`to_pixels` is the one resize-to-model-input step that the data pipelines,
`decode_image` and `keras_vit.explain` share, so every path resizes alike.

Without TensorFlow (Keras on JAX or PyTorch alone), `load_images` decodes
with Pillow after the same header check (`pillow_image_pixels`) and
`array_to_pixels` resizes with `keras.ops` as `to_pixels` does; the other
decoders here need TensorFlow and say so.
"""

import pathlib
import re
import warnings

import numpy as np

from keras_vit._backend import require_tensorflow, tensorflow_installed

if tensorflow_installed():
    import tensorflow as tf
else:  # the functions that need it call require_tensorflow first
    tf = None

# Pillow's decompression-bomb threshold (`PIL.Image.MAX_IMAGE_PIXELS`): a
# 250-megapixel PNG of 200 KB would otherwise decode to gigabytes.
MAX_IMAGE_PIXELS = 89_478_485
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
_HEAD_BYTES = 32


class DataError(ValueError):
    """A data source that cannot be found or read."""


def check_image_size(image_size):
    """An image size as a `(height, width)` tuple of ints.

    Args:
        image_size: a positive int (square) or `(height, width)`; `None`
            passes through (the source's own size).

    Returns:
        `(height, width)`, or `None`.

    Example:

    >>> keras_vit.images.check_image_size(224)
    (224, 224)
    """
    if image_size is None:
        return None
    given = image_size
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    image_size = tuple(image_size)
    if len(image_size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in image_size):
        raise ValueError(
            f"image_size must be a positive int or (height, width), received image_size={given!r}."
        )
    return tuple(int(v) for v in image_size)


def to_pixels(image, image_size):
    """Decoded pixels as model input: float32 RGB at `image_size`.

    Args:
        image: a uint8 or float image (or batch) of 1, 3 or 4 channels,
            values in [0, 255]; grayscale becomes RGB, alpha is dropped.
        image_size: `(height, width)`.

    Returns:
        A float32 tensor `(..., height, width, 3)` in [0, 255].

    Example:

    >>> keras_vit.images.to_pixels(np.full((4, 4, 1), 255, "uint8"), (8, 8)).shape
    TensorShape([8, 8, 3])
    """
    require_tensorflow("keras_vit.images.to_pixels")
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    if tuple(image.shape[-3:-1]) != tuple(image_size):
        # Bilinear without antialiasing: what keras.utils.image_dataset_from_directory
        # (folder data sets) does, so every path resizes alike. A uint8 image is
        # resized as it is (the kernel reads uint8 and writes float32, the same
        # values as casting first): a float32 copy at full size would take four
        # bytes a pixel-channel, 1 GB for an image just under the pixel limit.
        image = tf.image.resize(image, image_size, method="bilinear")
        image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.cast(image, tf.float32)


def _unsigned(head, start, length, big_endian=False):
    weights = [256**k for k in range(length)]
    if big_endian:
        weights.reverse()
    return sum(head[start + k] * w for k, w in enumerate(weights))


def _skip_gif_sub_blocks(data, n, pos):
    """Position after a chain of GIF data sub-blocks starting at `pos`."""
    pos = tf.while_loop(
        lambda p: tf.logical_and(p < n, tf.gather(data, tf.minimum(p, n - 1)) > 0),
        lambda p: (p + tf.gather(data, p) + 1,),
        (pos,),
    )[0]
    return pos + 1


def _gif_frame_pixels(data, limit):
    """Pixels of all frames of a GIF, read from its block structure.

    TensorFlow's GIF decoder (giflib's `DGifSlurp`) decodes every frame,
    each at the size its own descriptor declares, even when only the first
    is wanted: the logical screen size bounds nothing. The walk stops once
    the total passes `limit`.
    """
    data = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64)
    n = tf.size(data, out_type=tf.int64)

    def byte(pos):
        return tf.gather(data, tf.clip_by_value(pos, 0, n - 1))

    flags = byte(tf.constant(10, tf.int64))
    pos = 13 + tf.where(flags >= 128, 3 * 2 ** (flags % 8 + 1), 0)

    def body(pos, total):
        tag = byte(pos)

        def extension():
            return _skip_gif_sub_blocks(data, n, pos + 2), total

        def frame():
            width = byte(pos + 5) + 256 * byte(pos + 6)
            height = byte(pos + 7) + 256 * byte(pos + 8)
            local = byte(pos + 9)
            start = pos + 10 + tf.where(local >= 128, 3 * 2 ** (local % 8 + 1), 0) + 1
            return _skip_gif_sub_blocks(data, n, start), total + width * height

        # Anything else is where giflib stops too: end the walk.
        return tf.case([(tf.equal(tag, 0x21), extension), (tf.equal(tag, 0x2C), frame)],
                       default=lambda: (n, total))

    def more(pos, total):
        return tf.logical_and(tf.logical_and(pos < n, byte(pos) != 0x3B), total <= limit)

    return tf.while_loop(more, body, (pos, tf.constant(0, tf.int64)))[1]


if tf is not None:
    _gif_frame_pixels = tf.function(
        _gif_frame_pixels,
        input_signature=[tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.int64)],
        autograph=False,
    )


def image_pixels(image_bytes, max_pixels=MAX_IMAGE_PIXELS):
    """The pixel count an encoded image declares, read without decoding it.

    JPEG (its SOF header, by `tf.image.extract_jpeg_shape`), PNG (IHDR),
    BMP, WebP (VP8, VP8L and VP8X headers) and GIF (all frames: see
    `_gif_frame_pixels`). Works inside `tf.function`.

    Args:
        image_bytes: a scalar `tf.string` (or `bytes`).
        max_pixels: a GIF's frames are counted only until they pass this.

    Returns:
        A scalar int64 tensor; -1 for a format none of the above.
    """
    require_tensorflow("keras_vit.images.image_pixels")
    data = tf.convert_to_tensor(image_bytes, tf.string)
    head = tf.strings.substr(tf.strings.join([data, tf.constant(b"\0" * _HEAD_BYTES)]), 0, _HEAD_BYTES)
    b = tf.unstack(tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64), num=_HEAD_BYTES)

    def starts(prefix, at=0):
        return tf.equal(tf.strings.substr(head, at, len(prefix)), prefix)

    def png():
        return _unsigned(b, 16, 4, big_endian=True) * _unsigned(b, 20, 4, big_endian=True)

    def bmp():
        def signed(start):
            value = _unsigned(b, start, 4)
            return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

        core = tf.equal(_unsigned(b, 14, 4), 12)  # BITMAPCOREHEADER: 16-bit sizes
        return tf.where(core, _unsigned(b, 18, 2) * _unsigned(b, 20, 2), signed(18) * signed(22))

    def webp():
        lossy = (_unsigned(b, 26, 2) % 2**14) * (_unsigned(b, 28, 2) % 2**14)
        bits = _unsigned(b, 21, 4)
        lossless = (bits % 2**14 + 1) * (bits // 2**14 % 2**14 + 1)
        extended = (_unsigned(b, 24, 3) + 1) * (_unsigned(b, 27, 3) + 1)
        return tf.where(starts(b"VP8L", 12), lossless,
                        tf.where(starts(b"VP8X", 12), extended, lossy))

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.case(
        [
            (starts(b"\xff\xd8\xff"), jpeg),
            (starts(b"\x89PNG\r\n\x1a\n"), png),
            (starts(b"GIF8"), lambda: _gif_frame_pixels(data, tf.constant(max_pixels, tf.int64))),
            (starts(b"BM"), bmp),
            (tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)), webp),
        ],
        default=lambda: tf.constant(-1, tf.int64),
    )


def decode_image(image_bytes, image_size, max_pixels=MAX_IMAGE_PIXELS):
    """Decodes one encoded image (JPEG, PNG, GIF, BMP or WebP bytes, a
    scalar `tf.string`) to float32 RGB in [0, 255] at `image_size`, exactly
    as the data pipelines prepare training images. Works inside
    `tf.function` (the exported serving signature uses it).

    Grayscale becomes RGB, an alpha channel is dropped, 16-bit PNGs are
    scaled to 8 bits, CMYK JPEGs are converted and an animated GIF gives its
    first frame. Before anything is decoded, the size the image's header
    declares is checked: an image of more than `max_pixels` pixels (a
    decompression bomb: a small file that decodes to gigabytes) or of
    another format is refused with `tf.errors.InvalidArgumentError`.
    """
    require_tensorflow("keras_vit.images.decode_image")
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    not_empty = tf.debugging.Assert(tf.strings.length(image_bytes) > 0, ["empty image: 0 bytes"])
    with tf.control_dependencies([not_empty]):
        pixels = image_pixels(image_bytes, max_pixels)
    checks = [
        tf.debugging.Assert(
            pixels >= 0,
            [f"unknown image format: expected one of {', '.join(IMAGE_FORMATS)}"],
        ),
        tf.debugging.Assert(
            pixels <= max_pixels,
            [tf.strings.format(
                "image of {} pixels refused: more than the limit of {} (max_pixels); "
                "a decompression bomb?", (pixels, max_pixels))],
        ),
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return to_pixels(image, check_image_size(image_size))


def tf_error_message(error):
    """A TensorFlow error's message without its graph-execution boilerplate:
    the text of a failed `tf.debugging.Assert`, or the op's own message."""
    text = str(getattr(error, "message", error))
    found = re.search(r"Summarized data: b'(.*)'\s*$", text, re.S) or re.search(
        r"assertion failed: \[(.*?)\]\s*(\n|$)", text)
    if found:
        return found.group(1).strip()[:1000]
    lines = [
        line.strip() for line in text.splitlines()
        if line.strip() and not line.strip().startswith(
            ("Graph execution error", "Detected at node", "File ", "<stack traces", "[["))
    ]
    message = " ".join(lines).split(" [[")[0]
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\]( name:.*)?$", "", message)[:1000]


def load_images(paths, image_size, max_pixels=MAX_IMAGE_PIXELS):
    """Reads image files (JPEG, PNG, BMP, GIF) as float32 RGB in [0, 255].

    Args:
        paths: image file paths.
        image_size: `(height, width)` to resize to.
        max_pixels: larger images (by their header) are refused unread.

    Returns:
        A float32 array `(len(paths), height, width, 3)`.

    Without TensorFlow the files are decoded by Pillow (`_pillow_pixels`)
    and resized by `array_to_pixels`; JPEG decoders differ in their last
    bit, so pixels may differ from TensorFlow's by a few levels.
    """
    image_size = check_image_size(image_size)
    images = []
    for path in paths:
        path = pathlib.Path(path)
        if not path.is_file():
            raise DataError(f"Image not found: {path}")
        if tf is None:
            images.append(array_to_pixels(_pillow_pixels(path, max_pixels)[None], image_size)[0])
            continue
        try:
            image = decode_image(tf.io.read_file(str(path)), image_size, max_pixels)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise DataError(f"Cannot read {path} as an image: {tf_error_message(error)}") from error
        images.append(image.numpy())
    return np.stack(images) if images else np.zeros((0,) + image_size + (3,), "float32")


def array_to_pixels(images, image_size):
    """`to_pixels` for a NumPy batch on any Keras backend: float32 RGB at
    `image_size`, resized by `keras.ops.image.resize` (bilinear, half-pixel
    centres, no antialiasing: what `tf.image.resize` computes).

    Args:
        images: `(n, height, width, channels)` with 1, 3 or 4 channels,
            values in [0, 255].
        image_size: `(height, width)`.

    Returns:
        A float32 NumPy array `(n, *image_size, 3)`.
    """
    import keras

    images = np.asarray(images, dtype="float32")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    if tuple(images.shape[1:3]) != tuple(image_size) and len(images):
        resized = keras.ops.image.resize(images, tuple(image_size), interpolation="bilinear",
                                         antialias=False, data_format="channels_last")
        images = np.clip(keras.ops.convert_to_numpy(resized), 0.0, 255.0).astype("float32")
    return images


# IMAGE_FORMATS as Pillow names them.
_PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


def pillow_image_pixels(image):
    """The pixel count an opened Pillow image declares (its header: Pillow
    reads no pixel data before `load`), all frames of an animated GIF."""
    frames = getattr(image, "n_frames", 1) if image.format == "GIF" else 1
    return image.size[0] * image.size[1] * max(1, frames)


def _pillow_pixels(path, max_pixels):
    """One image file as a uint8-range float32 array `(height, width, 3)`,
    decoded by Pillow, for `load_images` without TensorFlow.

    Written here rather than with `keras.utils.load_img` (which also uses
    Pillow) because the header is checked against `max_pixels` before any
    pixel is decoded, and 16-bit PNGs are scaled to 8 bits as TensorFlow's
    decoder does (Pillow's RGB conversion would clip them).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns of a bomb at open; the check below refuses it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.format not in _PILLOW_FORMATS:
                raise DataError(f"Cannot read {path} as an image: unknown image format: expected one of "
                                f"{', '.join(IMAGE_FORMATS)}")
            pixels = pillow_image_pixels(image)
            if pixels > max_pixels:
                raise DataError(
                    f"Cannot read {path} as an image: image of {pixels} pixels refused: more than the "
                    f"limit of {max_pixels} (max_pixels); a decompression bomb?")
            image.seek(0)
            if image.mode.startswith("I;16") or image.mode == "I":
                # The high byte, as TensorFlow's PNG decoder gives 8 bits.
                array = (np.asarray(image).astype("int64") >> 8).clip(0, 255).astype("float32")
                return np.repeat(array[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"), dtype="float32")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"Cannot read {path} as an image: {error}") from error


def scan_images(paths, max_pixels=MAX_IMAGE_PIXELS):
    """Decodes every image file once and reports those that cannot be used.

    Files are read in parallel with tf.data; the few that fail are decoded
    again one by one for their error message.

    Args:
        paths: image file paths.
        max_pixels: as in `decode_image`.

    Returns:
        `{path: reason}` for every unreadable, undecodable or oversized file.
    """
    require_tensorflow("keras_vit.images.scan_images")
    paths = [str(p) for p in paths]
    if not paths:
        return {}

    def check(path):
        # The image is returned so that its decode is part of the result: a
        # decode nothing uses would be pruned from the graph (control
        # dependencies on it are optimised away too).
        return path, decode_image(tf.io.read_file(path), (1, 1), max_pixels)

    readable = tf.data.Dataset.from_tensor_slices(paths).map(
        check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    ).ignore_errors()
    good = {p.decode() for p, _ in readable.as_numpy_iterator()}
    bad = {}
    for path in paths:
        if path in good:
            continue
        try:
            decode_image(tf.io.read_file(path), (1, 1), max_pixels)
            bad[path] = "unreadable"
        except (tf.errors.OpError, ValueError) as error:
            bad[path] = tf_error_message(error)
    return bad
