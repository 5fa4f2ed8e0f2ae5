"""Translating a Hub repository's `config.json`, timm's or transformers'
layout, into keras_vit's terms, refusing (and naming) any value keras_vit
cannot represent."""

import re
import warnings

from keras_vit import variants
from keras_vit.weights.formats import CheckpointError
from keras_vit.weights.hub_download import CONFIG

# The plain ViTs among timm's architectures; everything else (CLIP, SigLIP,
# registers, RoPE, hybrids, DINOv2, average pooling, ...) adds or changes
# layers that keras_vit does not have.
_TIMM_PATTERN = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)$")
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
# timm `model_args` that set sizes keras_vit takes over.
_TIMM_SIZE_ARGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# timm `model_args` that change nothing keras_vit's architecture depends on.
_TIMM_FREE_ARGS = {
    "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
    "drop_path_rate", "weight_init", "fix_init", "dynamic_img_size", "dynamic_img_pad",
    "num_classes", "global_pool",
}
# timm `model_args` that keras_vit can represent with these values only
# (timm's defaults for a plain ViT).
_TIMM_FIXED_ARGS = {
    "in_chans": (3,),
    "qkv_bias": (True,),
    "qk_norm": (False,),
    "scale_attn_norm": (False,),
    "scale_mlp_norm": (False,),
    "proj_bias": (True,),
    "init_values": (None,),
    "class_token": (True,),
    "pos_embed": ("learn",),
    "no_embed_class": (False,),
    "reg_tokens": (0,),
    "pre_norm": (False,),
    "final_norm": (True,),
    "fc_norm": (None, False),
    "pool_include_prefix": (False,),
    "embed_norm_layer": (None,),
    "norm_layer": (None,),
    "act_layer": (None, "gelu"),
}
_TRANSFORMERS_ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
_WNID_PATTERN = re.compile(r"^n\d{8}$")
_IMAGENET_CLASSES = (1000, 21843)
# keras_vit.preprocess_input's mapping to [-1, 1] is mean = std = 0.5.
_VIT_MEAN_STD = 0.5


def _refuse(handle, what, value, expected):
    raise CheckpointError(
        f"{handle}: {what}={value!r} in its {CONFIG} is not a ViT keras_vit can represent "
        f"(expected {expected})."
    )


def _imagenet_names(classes):
    """`keras_vit.imagenet`'s short names and WordNet ids for 1k / 21k, if known."""
    if classes not in _IMAGENET_CLASSES:
        return None, None
    try:
        from keras_vit import imagenet

        return tuple(imagenet.class_names(classes)), tuple(imagenet.wnids(classes))
    except (ImportError, AttributeError, ValueError, OSError):
        return None, None


def _timm_class_names(config, classes):
    labels = config.get("label_names")
    if labels is not None and (not isinstance(labels, list) or len(labels) != classes):
        labels = None
    if labels is None:
        return list(_imagenet_names(classes)[0] or ()) or None
    labels = [str(label) for label in labels]
    if all(_WNID_PATTERN.match(label) for label in labels):
        names, wnids = _imagenet_names(len(labels))
        if names is not None:
            by_wnid = dict(zip(wnids, names))
            if all(label in by_wnid for label in labels):
                # Mapped by WordNet id, not position: right whatever order
                # the repository lists its classes in.
                return [by_wnid[label] for label in labels]
    return labels


def _image_size(value, handle, what):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1] \
            and isinstance(value[0], int) and value[0] > 0:
        return value[0]
    _refuse(handle, what, value, "a positive int, or a square size")


def _timm_config(handle, config):
    architecture = str(config.get("architecture", "")).split(".")[0]
    match = _TIMM_PATTERN.match(architecture)
    if not match:
        raise CheckpointError(
            f"{handle}: timm architecture {architecture!r} is not a plain ViT keras_vit can "
            "build: keras_vit reads 'vit_{tiny,small,base,large,huge}_patch<P>_<size>' "
            "models (no CLIP, SigLIP, registers, RoPE, hybrid or distilled variants)."
        )
    size, patch_size, name_size = match.groups()
    sizes = variants.get_config(f"{_TIMM_SIZES[size]}/{patch_size}")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        _refuse(handle, "model_args", model_args, "a dict")
    for key, value in model_args.items():
        allowed = _TIMM_FIXED_ARGS.get(key)
        if allowed is not None and value not in allowed:
            _refuse(handle, f"model_args.{key}", value, " or ".join(map(repr, allowed)))
        if allowed is None and key not in _TIMM_FREE_ARGS and key not in _TIMM_SIZE_ARGS:
            raise CheckpointError(
                f"{handle}: model_args.{key}={value!r} in its {CONFIG} is not an argument "
                "keras_vit knows how to represent: its plain ViTs take img_size, patch_size, "
                "embed_dim, depth, num_heads, mlp_ratio and dropout rates."
            )

    hidden_dim = model_args.get("embed_dim", sizes.hidden_dim)
    mlp_ratio = model_args.get("mlp_ratio", sizes.mlp_dim / sizes.hidden_dim)
    result = {
        "patch_size": model_args.get("patch_size", sizes.patch_size),
        "hidden_dim": hidden_dim,
        "num_layers": model_args.get("depth", sizes.num_layers),
        "num_heads": model_args.get("num_heads", sizes.num_heads),
        "mlp_dim": int(hidden_dim * mlp_ratio),
    }
    # The resolution the weights were made for: timm builds the model at
    # model_args' img_size, else at pretrained_cfg's input_size, else at the
    # size its name ends with.
    if "img_size" in model_args:
        image_size = _image_size(model_args["img_size"], handle, "model_args.img_size")
    elif pretrained_cfg.get("input_size"):
        input_size = list(pretrained_cfg["input_size"])
        if len(input_size) != 3 or input_size[0] != 3:
            _refuse(handle, "pretrained_cfg.input_size", input_size, "[3, height, width]")
        image_size = _image_size(input_size[1:], handle, "pretrained_cfg.input_size")
    else:
        image_size = int(name_size)
    result["image_size"] = image_size

    global_pool = config.get("global_pool", model_args.get("global_pool", "token"))
    if global_pool != "token":
        _refuse(handle, "global_pool", global_pool,
                "'token': keras_vit's heads read the class token")
    num_features = config.get("num_features")
    if num_features is not None and num_features != hidden_dim:
        _refuse(handle, "num_features", num_features, f"the width {hidden_dim}")
    classes = config.get("num_classes", pretrained_cfg.get("num_classes", 0)) or 0
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        _refuse(handle, "num_classes", classes, "a non-negative int")

    for key in ("mean", "std"):
        value = pretrained_cfg.get(key)
        if value is not None and any(abs(float(v) - _VIT_MEAN_STD) > 1e-6 for v in value):
            warnings.warn(
                f"{handle} was trained on images normalised with mean="
                f"{pretrained_cfg.get('mean')} and std={pretrained_cfg.get('std')}, not the "
                "[-1, 1] of keras_vit.preprocess_input (mean = std = 0.5): normalise its "
                "inputs as the checkpoint expects, ((x / 255) - mean) / std, instead of "
                "calling preprocess_input or using include_preprocessing=True.",
                stacklevel=4,
            )
            break

    result.update(
        classes=classes,
        class_names=_timm_class_names(config, classes) if classes else None,
        representation_size=None,
        library="timm",
    )
    return result


def _safetensors_shapes(path):
    """Tensor names and shapes from a safetensors header, without its data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"Cannot read {path} as a '.safetensors' file: {error}") from error


def _transformers_class_names(config, classes):
    id2label = config.get("id2label") or {}
    try:
        labels = {int(index): str(label) for index, label in id2label.items()}
    except (TypeError, ValueError, AttributeError):
        return None
    if sorted(labels) != list(range(classes)):
        return None
    names = [labels[index] for index in range(classes)]
    # transformers names the classes of a config without labels "LABEL_0", ...
    if all(name == f"LABEL_{index}" for index, name in enumerate(names)):
        return None
    return names


def _transformers_config(handle, config, checkpoint):
    def check(key, default, allowed, expected):
        value = config.get(key, default)
        if value not in allowed:
            _refuse(handle, key, value, expected)
        return value

    check("model_type", None, ("vit",), "'vit'")
    check("num_channels", 3, (3,), "3: keras_vit models take RGB images")
    check("qkv_bias", True, (True,), "True: keras_vit's attention has q, k, v biases")
    check("hidden_act", "gelu", ("gelu",), "'gelu', the exact GELU of keras_vit's MLPs")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture is not None and architecture not in _TRANSFORMERS_ARCHITECTURES:
        _refuse(handle, "architectures", architectures,
                " or ".join(repr([a]) for a in _TRANSFORMERS_ARCHITECTURES))

    result = {}
    for ours, theirs in (
        ("patch_size", "patch_size"),
        ("hidden_dim", "hidden_size"),
        ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"),
        ("mlp_dim", "intermediate_size"),
    ):
        value = config.get(theirs)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            _refuse(handle, theirs, value, "a positive int")
        result[ours] = value
    result["image_size"] = _image_size(config.get("image_size"), handle, "image_size")

    representation_size = None
    if architecture == "ViTForImageClassification":
        classes = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    elif architecture == "ViTModel":
        classes = 0
        # ViTModel has a pooler (the original's tanh pre-logits layer) unless
        # it was built with add_pooling_layer=False, which its config does not
        # record: only the checkpoint's own names tell.
        shapes = _safetensors_shapes(checkpoint())
        pooler = shapes.get("pooler.dense.weight", shapes.get("vit.pooler.dense.weight"))
        if pooler is not None:
            check("pooler_act", "tanh", ("tanh",), "'tanh', the original's pre-logits")
            representation_size = int(pooler[0])
    else:
        # No `architectures` (a config written by hand): the checkpoint's
        # names say whether it has a classifier and a pooler.
        shapes = _safetensors_shapes(checkpoint())
        classifier = shapes.get("classifier.weight")
        classes = int(classifier[0]) if classifier is not None else 0
        pooler = shapes.get("pooler.dense.weight", shapes.get("vit.pooler.dense.weight"))
        representation_size = int(pooler[0]) if pooler is not None and not classes else None
    result.update(
        classes=classes,
        class_names=_transformers_class_names(config, classes) if classes else None,
        representation_size=representation_size,
        library="transformers",
    )
    return result


def translate(handle, config, checkpoint):
    """`config` (a repository's parsed `config.json`) in keras_vit's terms.

    Args:
        handle: the repository's handle, for the messages.
        config: the parsed `config.json`.
        checkpoint: a function returning the repository's `model.safetensors`
            path, called only where the config leaves the head unsaid.

    Returns:
        The dict described in `keras_vit.weights.hub.read_config`.
    """
    if "architecture" in config:
        return _timm_config(handle, config)
    if "model_type" in config:
        return _transformers_config(handle, config, checkpoint)
    raise CheckpointError(
        f"{handle}: its {CONFIG} has neither timm's 'architecture' nor transformers' "
        "'model_type': keras_vit reads timm and transformers ViT repositories."
    )
