"""Reading checkpoint files into one layout, the names of the original Google
checkpoints (`embedding/kernel`, `cls`, ...): Google `.npz` (with vit_jax's
and big_vision's prefixes and module names) and timm and Hugging Face
`.safetensors` state dicts. A `.weights.h5`, laid out by the model that
wrote it, is read in `layout`."""

import os
import pathlib
import zipfile

import numpy as np

# Prefixes under which Google releases nest the parameters: vit_jax's
# training state ("opt/target/") and big_vision ("params/").
_GOOGLE_PREFIXES = ("opt/target/", "params/")
# big_vision names the modules of each block by their position among their
# own kind; vit_jax counts all of a block's modules.
_BIG_VISION_NAMES = {
    "LayerNorm_1/": "LayerNorm_2/",
    "MlpBlock_0/": "MlpBlock_3/",
    "MultiHeadDotProductAttention_0/": "MultiHeadDotProductAttention_1/",
}
_H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def memory_limit():
    """The most bytes of arrays a checkpoint may declare: this machine's
    physical memory (64 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


# ml_dtypes' bfloat16 and float8 report kind "V": named here.
_NUMBER_NAMES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def is_number_dtype(dtype):
    """Whether arrays of `dtype` hold numbers a variable can take."""
    dtype = np.dtype(dtype)
    return dtype.kind in "fiu" or dtype.name in _NUMBER_NAMES


def check_declared_sizes(path, declared, limit=None):
    """Refuses a checkpoint whose arrays, as its headers declare them, are
    not numbers or do not fit in memory, before any array is read.

    Args:
        path: the file, for the messages.
        declared: `[(name, dtype, shape)]` from the file's headers.
        limit: bytes; default `memory_limit()`.

    Raises:
        CheckpointError: naming the array, or the total and the limit.
    """
    limit = memory_limit() if limit is None else limit
    total = 0
    for name, dtype, shape in declared:
        dtype = np.dtype(dtype)
        # Booleans pass here (readable); loading refuses them as values.
        if dtype.hasobject or not (dtype.kind == "b" or is_number_dtype(dtype)):
            raise CheckpointError(f"{path}: array {name!r} has dtype {dtype}, not numbers.")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        total += nbytes
        if total > limit:
            raise CheckpointError(
                f"{path} declares arrays of more than {limit} bytes, this machine's memory (array {name!r} "
                f"of shape {tuple(shape)}, {nbytes} bytes, brings the total to {total}): refused before "
                "reading them."
            )


def sniff_format(path):
    """`"npz"`, `"safetensors"` or `"h5"`, by name and first bytes."""
    name = path.name.lower()
    with open(path, "rb") as f:
        head = f.read(16)
    if name.endswith(".npz") or head.startswith(b"PK"):
        return "npz"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".h5") or head.startswith(_H5_SIGNATURE):
        return "h5"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 length + JSON
        return "safetensors"
    raise CheckpointError(
        f"{path} is not a checkpoint keras_vit can read: expected a Google "
        "'.npz', a timm or Hugging Face '.safetensors', or a keras_vit "
        "'.weights.h5' file."
    )


def _read_npz(path):
    if not zipfile.is_zipfile(path):
        # np.load would try anything that is not a zip as a pickle and refuse
        # it ("contains pickled data"): say what is really wrong.
        raise CheckpointError(
            f"Cannot read {path} as a '.npz' checkpoint: it is not a zip archive "
            "(a '.npz' is one); the file is truncated or corrupted."
        )
    try:
        check_declared_sizes(path, _npz_headers(path))
        # allow_pickle=False: a weights file never runs code when read.
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, MemoryError) as error:
        raise CheckpointError(
            f"Cannot read {path} as a '.npz' checkpoint: {error}"
        ) from error


def _npz_headers(path):
    """`[(name, dtype, shape)]` of a `.npz`'s arrays, read from each member's
    `.npy` header only. NumPy allocates the array a header declares before
    reading its data, so a member declaring shape (2**40,) would take the
    memory first; a header that declares more bytes than the member holds is
    refused here."""
    declared = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
            with archive.open(info) as member:
                if member.read(6) != b"\x93NUMPY":
                    declared.append((name, np.uint8, (info.file_size,)))  # np.load returns the bytes
                    continue
                member.seek(0)
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:  # 3.0 (a non-Latin-1 header) has no public reader
                    shape, _, dtype = np.lib.format._read_array_header(member, version)
                data_bytes = info.file_size - member.tell()
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if not dtype.hasobject else data_bytes
            if nbytes != data_bytes:
                raise CheckpointError(
                    f"{path}: array {name!r} declares shape {tuple(shape)} of {dtype} ({nbytes} bytes) "
                    f"but holds {data_bytes} bytes: the file is damaged or forged."
                )
            declared.append((name, dtype, shape))
    return declared


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        # safetensors checks that its header's offsets fit the file before
        # reading, and stores no compressed data.
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, MemoryError) as error:
        raise CheckpointError(
            f"Cannot read {path} as a '.safetensors' checkpoint: {error}"
        ) from error


def _strip_google_prefix(arrays):
    for prefix in _GOOGLE_PREFIXES:
        if f"{prefix}embedding/kernel" in arrays:
            return {
                key[len(prefix):]: value
                for key, value in arrays.items()
                if key.startswith(prefix)
            }
    return arrays


def _google_from_npz(arrays):
    arrays = _strip_google_prefix(arrays)
    renamed = {}
    for key, value in arrays.items():
        if key.startswith("Transformer/encoderblock_"):
            for old, new in _BIG_VISION_NAMES.items():
                key = key.replace("/" + old, "/" + new)
        renamed[key] = value
    return renamed


def _linear(state, name):
    """A PyTorch Linear's (out, in) weight as a Keras (in, out) kernel."""
    return state.pop(f"{name}.weight").T, state.pop(f"{name}.bias")


def _google_from_timm(state, num_heads):
    state = dict(state)
    out = {}
    weight = state.pop("patch_embed.proj.weight")
    out["embedding/kernel"] = weight.transpose(2, 3, 1, 0)
    out["embedding/bias"] = state.pop("patch_embed.proj.bias")
    out["cls"] = state.pop("cls_token")
    out["Transformer/posembed_input/pos_embedding"] = state.pop("pos_embed")
    index = 0
    while f"blocks.{index}.norm1.weight" in state:
        src, dst = f"blocks.{index}.", f"Transformer/encoderblock_{index}/"
        attn = dst + "MultiHeadDotProductAttention_1/"
        out[dst + "LayerNorm_0/scale"] = state.pop(src + "norm1.weight")
        out[dst + "LayerNorm_0/bias"] = state.pop(src + "norm1.bias")
        qkv_kernel, qkv_bias = _linear(state, src + "attn.qkv")
        hidden_dim = qkv_kernel.shape[0]
        head_dim = hidden_dim // num_heads
        for part, name in enumerate(("query", "key", "value")):
            columns = slice(part * hidden_dim, (part + 1) * hidden_dim)
            out[attn + f"{name}/kernel"] = qkv_kernel[:, columns].reshape(
                hidden_dim, num_heads, head_dim
            )
            out[attn + f"{name}/bias"] = qkv_bias[columns].reshape(num_heads, head_dim)
        kernel, bias = _linear(state, src + "attn.proj")
        out[attn + "out/kernel"] = kernel.reshape(num_heads, head_dim, -1)
        out[attn + "out/bias"] = bias
        out[dst + "LayerNorm_2/scale"] = state.pop(src + "norm2.weight")
        out[dst + "LayerNorm_2/bias"] = state.pop(src + "norm2.bias")
        for layer in (0, 1):
            kernel, bias = _linear(state, src + f"mlp.fc{layer + 1}")
            out[dst + f"MlpBlock_3/Dense_{layer}/kernel"] = kernel
            out[dst + f"MlpBlock_3/Dense_{layer}/bias"] = bias
        index += 1
    out["Transformer/encoder_norm/scale"] = state.pop("norm.weight")
    out["Transformer/encoder_norm/bias"] = state.pop("norm.bias")
    if "head.weight" in state:
        out["head/kernel"], out["head/bias"] = _linear(state, "head")
    # Whatever is left is reported as unexpected by the loader.
    out.update({f"timm:{key}": value for key, value in state.items()})
    return out


def _google_from_huggingface(state, num_heads):
    state = dict(state)
    prefix = "vit." if "vit.embeddings.cls_token" in state else ""
    out = {}
    emb = prefix + "embeddings."
    weight = state.pop(emb + "patch_embeddings.projection.weight")
    out["embedding/kernel"] = weight.transpose(2, 3, 1, 0)
    out["embedding/bias"] = state.pop(emb + "patch_embeddings.projection.bias")
    out["cls"] = state.pop(emb + "cls_token")
    out["Transformer/posembed_input/pos_embedding"] = state.pop(emb + "position_embeddings")
    index = 0
    while f"{prefix}encoder.layer.{index}.layernorm_before.weight" in state:
        src = f"{prefix}encoder.layer.{index}."
        dst = f"Transformer/encoderblock_{index}/"
        attn = dst + "MultiHeadDotProductAttention_1/"
        out[dst + "LayerNorm_0/scale"] = state.pop(src + "layernorm_before.weight")
        out[dst + "LayerNorm_0/bias"] = state.pop(src + "layernorm_before.bias")
        for name in ("query", "key", "value"):
            kernel, bias = _linear(state, src + f"attention.attention.{name}")
            hidden_dim = kernel.shape[0]
            out[attn + f"{name}/kernel"] = kernel.reshape(hidden_dim, num_heads, -1)
            out[attn + f"{name}/bias"] = bias.reshape(num_heads, -1)
        kernel, bias = _linear(state, src + "attention.output.dense")
        out[attn + "out/kernel"] = kernel.reshape(num_heads, -1, kernel.shape[-1])
        out[attn + "out/bias"] = bias
        out[dst + "LayerNorm_2/scale"] = state.pop(src + "layernorm_after.weight")
        out[dst + "LayerNorm_2/bias"] = state.pop(src + "layernorm_after.bias")
        kernel, bias = _linear(state, src + "intermediate.dense")
        out[dst + "MlpBlock_3/Dense_0/kernel"], out[dst + "MlpBlock_3/Dense_0/bias"] = kernel, bias
        kernel, bias = _linear(state, src + "output.dense")
        out[dst + "MlpBlock_3/Dense_1/kernel"], out[dst + "MlpBlock_3/Dense_1/bias"] = kernel, bias
        index += 1
    out["Transformer/encoder_norm/scale"] = state.pop(prefix + "layernorm.weight")
    out["Transformer/encoder_norm/bias"] = state.pop(prefix + "layernorm.bias")
    # ViTModel's pooler is the tanh pre-logits layer of the original.
    if prefix + "pooler.dense.weight" in state:
        out["pre_logits/kernel"], out["pre_logits/bias"] = _linear(state, prefix + "pooler.dense")
    if "classifier.weight" in state:
        out["head/kernel"], out["head/bias"] = _linear(state, "classifier")
    out.update({f"transformers:{key}": value for key, value in state.items()})
    return out


def read_checkpoint(path, num_heads):
    """Reads a `.npz` or `.safetensors` checkpoint into Google-named arrays.

    Args:
        path: the checkpoint file.
        num_heads: attention heads of the model (PyTorch layouts keep the
            heads fused in one axis).

    Returns:
        A dict from Google checkpoint names to NumPy arrays.
    """
    path = pathlib.Path(path)
    fmt = sniff_format(path)
    if fmt == "npz":
        arrays = _google_from_npz(_read_npz(path))
        if "embedding/kernel" not in arrays:
            raise CheckpointError(
                f"{path} is a '.npz' file but not a ViT checkpoint: it has no "
                "'embedding/kernel' array (found "
                f"{', '.join(sorted(arrays)[:5]) or 'no arrays'})."
            )
        return arrays
    if fmt == "safetensors":
        state = _read_safetensors(path)
        try:
            if "patch_embed.proj.weight" in state:
                return _google_from_timm(state, num_heads)
            if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
                return _google_from_huggingface(state, num_heads)
        except KeyError as error:
            raise CheckpointError(
                f"{path}: the state dict lacks {error.args[0]!r}, which a ViT "
                "checkpoint must have."
            ) from error
        except ValueError as error:  # a reshape to the model's heads failed
            raise CheckpointError(
                f"{path}: cannot split its attention weights into "
                f"num_heads={num_heads} heads: {error}"
            ) from error
        raise CheckpointError(
            f"{path} is a '.safetensors' file but neither a timm nor a Hugging "
            "Face ViT state dict (no 'patch_embed.proj.weight' or "
            "'embeddings.patch_embeddings.projection.weight')."
        )
    raise CheckpointError(f"{path} is a Keras '.weights.h5' file, not a .npz/.safetensors.")

