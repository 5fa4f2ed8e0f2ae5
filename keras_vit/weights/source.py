"""What a builder's `weights=` argument names (nothing, a named checkpoint,
an `hf://` handle or a file), what that implies for the model's defaults
(image size, classes, pre-logits, class names), and loading it into the
built model.
"""

import dataclasses
import os

from keras_vit import models
from keras_vit import weights as vit_weights
from keras_vit.weights import hub, pretrained


@dataclasses.dataclass
class WeightsSource:
    """What `weights=` names, and what it implies for the model's defaults."""

    weights: object = None
    named: object = None  # a pretrained.PretrainedWeights
    hub_config: dict = None
    image_size: int = None
    classes: int = None
    representation_size: int = None
    class_names: tuple = None

    def load(self, model):
        if self.weights is None:
            return
        if self.named is not None:
            path = pretrained.fetch(self.named)
            try:
                vit_weights.load_weights(model, path)
            except vit_weights.CheckpointError as error:
                if pretrained.intact(self.named):
                    raise  # the file is right; the model does not take it
                # The cache must not keep a file that does not load.
                path.unlink(missing_ok=True)
                raise vit_weights.CheckpointError(
                    f"{error} The file came from {self.named.url} and was removed from the cache "
                    f"({path}); the next call downloads it again."
                ) from error
        elif self.hub_config is not None:
            # Resampled as the checkpoint's own library would (see hub.from_pretrained).
            vit_weights.load_weights(model, hub.checkpoint_file(self.weights), interpolation="bicubic",
                                    antialias=self.hub_config["library"] == "timm")
        else:
            vit_weights.load_weights(model, self.weights)
        names = self.class_names
        has_head = models.get_part(model, "head") is not None
        if names is not None and has_head and model.output_shape[-1] == len(names):
            model.class_names = names


def resolve(variant, config, weights, input_tensor, input_shape):
    """The `WeightsSource` of a builder's `weights=` argument; raises a
    TypeError for a value that names nothing."""
    if weights is None:
        return WeightsSource()
    if not isinstance(weights, (str, bytes)) and not hasattr(weights, "__fspath__"):
        raise TypeError(
            "weights must be None, a named checkpoint ('imagenet', 'imagenet21k', a tag of "
            "keras_vit.list_weights()), 'hf://ORG/NAME' or the path of a checkpoint file, "
            f"received weights={weights!r}."
        )
    if hub.is_handle(weights):
        found = hub.read_config(weights)
        names = found.get("class_names")
        return WeightsSource(weights, hub_config=found, image_size=found.get("image_size"),
                             classes=found.get("classes") or None,
                             representation_size=found.get("representation_size"),
                             class_names=tuple(names) if names else None)
    if isinstance(weights, str) and not os.path.exists(weights) and pretrained.looks_like_name(weights):
        shape = input_shape if input_shape is not None else (
            tuple(input_tensor.shape[1:]) if input_tensor is not None else None)
        image_size = shape[0] if shape is not None and len(shape) == 3 and isinstance(shape[0], int) else None
        named = pretrained.named_checkpoint(weights, variant, dataclasses.asdict(config), image_size)
        return WeightsSource(weights, named=named, image_size=named.image_size, classes=named.classes,
                             representation_size=named.representation_size,
                             class_names=named.class_names)
    return WeightsSource(weights)
