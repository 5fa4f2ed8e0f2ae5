"""Classify photos with pretrained ImageNet weights, as keras.applications.

Run:
    python examples/classify_photos.py                    # ViT-B/16, AugReg ImageNet-1k weights (346 MB, once)
    python examples/classify_photos.py --variant S/16     # a smaller model (88 MB)
    python examples/classify_photos.py --top 3 --image-size 384   # the 384 fine-tune of the tag

The weights are downloaded on first use from Google's `vit_models` bucket
into Keras' cache (`~/.keras/models`, or `$KERAS_HOME/models`); later runs
read the cache. Offline, fetch them first on a machine with network
(`keras-vit weights download imagenet --variant B/16`) and copy the cache, or
point `KERAS_VIT_WEIGHTS_BASE_URL` at a mirror. It prints, per photo, the
top classes with their ImageNet names, as `keras_vit.decode_predictions`
returns them:
    ViT-B/16 (vit_base_patch16_224.augreg_in21k_ft_in1k): 86,567,656 parameters, 1000 classes
    astronaut    n.........  name (0.xx), ...
    chelsea      n.........  name (0.xx), ...
    coffee       ...
    grace_hopper ...

The photos are the demo images shipped with scikit-image and matplotlib.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quickstart import demo_photos  # noqa: E402 -- this folder's quickstart.py


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="B/16", help="a standard size with ImageNet weights (default B/16)")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or a tag of 'keras-vit weights list'")
    parser.add_argument("--image-size", type=int, help="input resolution (default: the checkpoint's)")
    parser.add_argument("--top", type=int, default=3, help="classes per photo")
    args = parser.parse_args(argv)

    import keras_vit

    shape = None if args.image_size is None else (args.image_size, args.image_size, 3)
    model = keras_vit.ViT(args.variant, weights=args.weights, input_shape=shape)
    entry = keras_vit.weights.pretrained.resolve(args.variant, args.weights, args.image_size)
    print(f"ViT-{args.variant} ({entry.timm_name}): {model.count_params():,} parameters, "
          f"{model.output_shape[-1]} classes")

    names, photos = demo_photos(model.input_shape[1])
    probabilities = model.predict(keras_vit.preprocess_input(photos), verbose=0)
    decoded = keras_vit.decode_predictions(probabilities, top=args.top)
    width = max(len(name) for name in names)
    for name, row in zip(names, decoded):
        print(f"{name:<{width}} " + ", ".join(f"{wnid} {label} ({score:.2f})" for wnid, label, score in row))
    return names, decoded


if __name__ == "__main__":
    main()
    sys.exit(0)
