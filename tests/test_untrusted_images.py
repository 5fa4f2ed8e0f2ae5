"""Untrusted images (issue 8): every format and mode a user may hand over is
converted or refused with a message naming the file, and a decompression
bomb is refused from its header, before it is decoded."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vit import cli, data, images


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)


def _png_bomb(width, height):
    """A valid grayscale PNG of zeros: a few hundred KB that decode to
    width x height x 3 bytes (and four times that as float32)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(width)
    payload = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")


def _jpeg_declaring(rgb, width, height):
    blob = bytearray(_encode(Image.fromarray(rgb), "JPEG"))
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(blob)


def _gif_with_frame(rgb, width, height):
    """A GIF whose logical screen is small but whose frame descriptor declares
    width x height (giflib allocates and decodes each frame at its own size)."""
    blob = bytearray(_encode(Image.fromarray(rgb), "GIF"))
    frame = blob.index(b"\x2c\x00\x00\x00\x00")
    blob[frame + 5:frame + 9] = struct.pack("<HH", width, height)
    return bytes(blob)


def _webp_declaring(width, height):
    """An extended (VP8X) WebP header declaring a width x height canvas."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + \
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _bmp_declaring(rgb, width, height):
    blob = bytearray(_encode(Image.fromarray(rgb), "BMP"))
    blob[18:26] = struct.pack("<ii", width, -height)  # negative: top-down rows
    return bytes(blob)


def _decode(blob, size=None, **kwargs):
    size = size or (24, 20)
    return images.decode_image(tf.constant(blob), size, **kwargs).numpy()


def test_modes_and_formats_are_converted_like_pillow(rgb):
    """Each becomes RGB float in [0, 255], equal to Pillow's own RGB
    conversion (lossless formats exactly, JPEG within its decoder's
    rounding)."""
    image = Image.fromarray(rgb)
    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    cases = {
        "PNG RGB": (_encode(image, "PNG"), rgb, 0),
        "PNG grayscale": (_encode(image.convert("L"), "PNG"), np.asarray(image.convert("L").convert("RGB")), 0),
        "PNG grayscale+alpha": (_encode(image.convert("LA"), "PNG"), np.asarray(image.convert("L").convert("RGB")), 0),
        "PNG RGBA (alpha dropped)": (_encode(image.convert("RGBA"), "PNG"), rgb, 0),
        "PNG palette": (_encode(image.convert("P"), "PNG"), np.asarray(image.convert("P").convert("RGB")), 0),
        "PNG 16-bit": (_encode(Image.fromarray(gray16), "PNG"), np.repeat(rgb[..., :1], 3, -1), 0),
        "BMP": (_encode(image, "BMP"), rgb, 0),
        "WebP lossless": (_encode(image, "WEBP", lossless=True), rgb, 0),
        "GIF": (_encode(image.convert("P"), "GIF"), np.asarray(image.convert("P").convert("RGB")), 0),
        "JPEG": (_encode(image, "JPEG", quality=95), np.asarray(Image.open(io.BytesIO(_encode(image, "JPEG", quality=95))).convert("RGB")), 8),  # decoders upsample chroma differently
        "JPEG CMYK": (_encode(image.convert("CMYK"), "JPEG", quality=95), None, None),
    }
    for name, (blob, expected, atol) in cases.items():
        decoded = _decode(blob)
        assert decoded.shape == (24, 20, 3) and decoded.dtype == np.float32, name
        if expected is None:
            # CMYK: Pillow's and libjpeg's conversions differ in detail; the
            # picture must still be the same one.
            correlation = np.corrcoef(decoded.ravel(), rgb.ravel().astype(float))[0, 1]
            assert correlation > 0.9, (name, correlation)
        else:
            np.testing.assert_allclose(decoded, expected.astype(np.float32), atol=atol, err_msg=name)


def test_animated_gif_gives_its_first_frame(rgb):
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(_decode(buffer.getvalue()), np.asarray(frames[0].convert("RGB")))
    assert int(images.image_pixels(buffer.getvalue())) == 2 * 24 * 20


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"", "empty image: 0 bytes"),
        (b"just some text", "unknown image format: expected one of JPEG, PNG, GIF, BMP, WebP"),
        (b"II*\x00" + bytes(100), "unknown image format"),  # TIFF
    ],
)
def test_empty_and_unknown_bytes_are_refused(blob, message):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _decode(blob)
    assert message in images.tf_error_message(info.value)


def test_truncated_images_are_refused(rgb):
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        blob = _encode(Image.fromarray(rgb), fmt)
        with pytest.raises(tf.errors.InvalidArgumentError):
            _decode(blob[: len(blob) // 2])


BOMBS = {
    "PNG 15000x15000 (220 KB, 4 GB decoded)": lambda rgb: _png_bomb(15000, 15000),
    "JPEG header declaring 60000x60000": lambda rgb: _jpeg_declaring(rgb, 60000, 60000),
    "GIF frame declaring 12000x12000": lambda rgb: _gif_with_frame(rgb, 12000, 12000),
    "WebP canvas 16384x16384": lambda rgb: _webp_declaring(16384, 16384),
    "BMP declaring 30000x30000": lambda rgb: _bmp_declaring(rgb, 30000, 30000),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_are_refused_from_their_header(rgb, name):
    blob = BOMBS[name](rgb)
    assert int(images.image_pixels(blob)) > images.MAX_IMAGE_PIXELS
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _decode(blob)
    message = images.tf_error_message(info.value)
    assert f"more than the limit of {images.MAX_IMAGE_PIXELS} (max_pixels)" in message, message


def test_gif_frames_are_counted_past_the_logical_screen(rgb):
    blob = _gif_with_frame(rgb, 12000, 12000)
    screen = struct.unpack("<HH", blob[6:10])
    assert screen == (20, 24)  # the header alone would say 480 pixels
    assert int(images.image_pixels(blob)) == 12000 * 12000


def test_pixel_limit_is_the_argument(rgb):
    blob = _encode(Image.fromarray(rgb), "PNG")
    assert _decode(blob, max_pixels=480).shape == (24, 20, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="479"):
        _decode(blob, max_pixels=479)


_MEMORY_PROBE = """
import sys
import tensorflow as tf
from keras_vit import images
bomb = open(sys.argv[1], "rb").read()
def peak_mb():
    # VmHWM, the peak resident size since the last reset below.
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
images.decode_image(tf.constant(open(sys.argv[2], "rb").read()), (8, 8))
reset_peak()
before = peak_mb()
try:
    images.decode_image(tf.constant(bomb), (8, 8), max_pixels=1_000_000)
    refused = False
except tf.errors.InvalidArgumentError:
    refused = True
after_refusal = peak_mb()
images.decode_image(tf.constant(bomb), (8, 8))  # 16 megapixels: under the default limit
after_decode = peak_mb()
print(refused, before, after_refusal, after_decode)
"""


def test_refusing_a_bomb_takes_no_memory(tmp_path, rgb):
    """Measured in a fresh process: refusing a 4000x4000 PNG (16 KB) does not
    move the peak memory; decoding it (the control) takes its 48 MB of RGB
    bytes, and not much more: resizing reads the uint8 pixels, where a
    float32 copy at full size first took 229 MB (issue 30: about 1.3 GB for
    an image just under the default limit)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(4000, 4000))
    small = tmp_path / "small.png"
    small.write_bytes(_encode(Image.fromarray(rgb), "PNG"))
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(bomb), str(small)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    refused, before, after_refusal, after_decode = out.stdout.split()
    before, after_refusal, after_decode = float(before), float(after_refusal), float(after_decode)
    print(f"peak RSS: {before:.0f} MB, after refusing the bomb {after_refusal:.0f} MB, "
          f"after decoding it {after_decode:.0f} MB ({bomb.stat().st_size} bytes of PNG)")
    assert refused == "True"
    assert after_refusal - before < 20
    rgb_mb = 4000 * 4000 * 3 / 2**20
    assert 0.6 * rgb_mb < after_decode - after_refusal < 1.5 * rgb_mb


def test_load_images_names_the_file(tmp_path, rgb):
    (tmp_path / "photo.png").write_bytes(_png_bomb(15000, 15000))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "really-a-png.jpg").write_bytes(_encode(Image.fromarray(rgb), "PNG"))
    assert images.load_images([tmp_path / "really-a-png.jpg"], (24, 20)).shape == (1, 24, 20, 3)
    with pytest.raises(images.DataError, match=r"Cannot read .*photo.png as an image: image of "
                                             r"225000000 pixels refused"):
        images.load_images([tmp_path / "photo.png"], 8)
    with pytest.raises(images.DataError, match=r"Cannot read .*empty.jpg as an image: empty image"):
        images.load_images([tmp_path / "empty.jpg"], 8)


def _folder(tmp_path, rgb, bad):
    root = tmp_path / "images"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            shifted = np.roll(rgb, i + (7 if label == "dog" else 0), axis=1)
            (root / label / f"{i}.png").write_bytes(_encode(Image.fromarray(shifted), "PNG"))
    for name, blob in bad.items():
        (root / name).write_bytes(blob)
    return root


def test_folder_with_bad_files_fails_up_front_naming_them(tmp_path, rgb):
    bad = {"cat/bomb.png": _png_bomb(15000, 15000), "dog/empty.jpg": b"",
           "dog/cut.png": _encode(Image.fromarray(rgb), "PNG")[:100]}
    root = _folder(tmp_path, rgb, bad)
    with pytest.raises(data.DataError) as info:
        data.load(root, image_size=8, batch_size=4)
    message = str(info.value)
    assert message.startswith(f"3 of 15 image files in {root} cannot be used")
    for name in bad:
        assert str(root / name) in message
    assert "pixels refused" in message and "empty image" in message
    assert "Invalid PNG data, size 100;" in message  # TensorFlow's words, without its op trace
    assert "--bad-images skip" in message


def test_folder_with_bad_files_skips_them_when_asked(tmp_path, rgb):
    root = _folder(tmp_path, rgb, {"cat/bomb.png": _png_bomb(15000, 15000), "dog/notes.gif": b"GIF89a"})
    with pytest.warns(UserWarning, match=r"2 of 14 image files .* skipped"):
        ds_train, ds_val, info = data.load(root, image_size=8, batch_size=4, validation_split=0.25,
                                           label_mode="int", bad_images="skip")
    assert info.num_examples["train"] + info.num_examples["validation"] == 12
    seen = sum(int(labels.shape[0]) for _, labels in ds_train) + sum(int(labels.shape[0]) for _, labels in ds_val)
    # Training batches drop the remainder: 9 training images in batches of 4.
    assert seen == 8 + info.num_examples["validation"]


def test_train_cli_bad_images_error_is_one_line(tmp_path, rgb, capsys):
    root = _folder(tmp_path, rgb, {"dog/empty.jpg": b""})
    code = cli.main(["train", "--data", str(root), "--image-size", "8", "--patch-size", "4",
                     "--epochs", "1", "--output", str(tmp_path / "run"), "--verbose", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{root / 'dog' / 'empty.jpg'}: empty image: 0 bytes" in err
    assert not (tmp_path / "run" / "backup").exists()


def test_predict_cli_refuses_a_bomb_naming_it(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(15000, 15000))
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--output", str(run), "--verbose", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(bomb)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"Cannot read {bomb} as an image: image of 225000000 pixels refused" in err


def test_exported_signature_refuses_a_bomb(tmp_path, rgb):
    import keras_vit

    model = keras_vit.ViT("Test/4", input_shape=(16, 16, 3), classes=3)
    version = keras_vit.export.export_saved_model(model, tmp_path / "export", max_image_pixels=10_000)
    loaded = tf.saved_model.load(version)
    serve = loaded.signatures["serving_default"]
    good = _encode(Image.fromarray(rgb), "PNG")
    assert serve(image_bytes=tf.constant([good]))["probabilities"].shape == (1, 3)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serve(image_bytes=tf.constant([good, _png_bomb(200, 100)]))
    assert "image of 20000 pixels refused: more than the limit of 10000" in images.tf_error_message(info.value)
    assert json.dumps(images.tf_error_message(info.value))  # one plain string for a JSON error body
