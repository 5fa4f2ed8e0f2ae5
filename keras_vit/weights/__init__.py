"""ViT checkpoints: reading and writing their formats, loading them into a
model through one reconciliation policy, and finding them by name
(`pretrained`, `download`) or on the Hugging Face Hub (`hub`).

| module | holds |
|---|---|
| `resample` | `resample_position_embedding` and its interpolation weights |
| `source` | what a builder's `weights=` names, and loading it into the built model |
| `formats` | reading `.npz` and `.safetensors` into Google's names, `CheckpointError` |
| `layout` | the model's checkpoint variables, `.weights.h5` files, `save_npz` |
| `loading` | `reconcile` (the one policy), `load_weights`, `check_checkpoint`, `load_model` |
| `pretrained` | the table of named checkpoints, `list_weights` |
| `download` | verified, atomic, locked downloads into Keras' cache |
| `hub` | `hf://` handles, `read_config`, `from_pretrained` |
| `hub_download`, `hub_config` | fetching a repository's files; its `config.json` |
"""

from keras_vit.weights import download, hub, pretrained
from keras_vit.weights.formats import CheckpointError, read_checkpoint
from keras_vit.weights.layout import save_npz
from keras_vit.weights.loading import check_checkpoint, load_model, load_weights
from keras_vit.weights.resample import resample_position_embedding

__all__ = [
    "CheckpointError",
    "check_checkpoint",
    "download",
    "hub",
    "load_model",
    "load_weights",
    "pretrained",
    "read_checkpoint",
    "resample_position_embedding",
    "save_npz",
]
