"""The `keras-vit` command line: `train`, `evaluate`, `predict`, `export`, `serve`.

    keras-vit train                      # main job: the digits, minutes on a laptop CPU
    keras-vit train --data fashion_mnist --epochs 30 --output runs/fmnist
    keras-vit evaluate runs/fmnist       # accuracy, loss, confusion matrix PNG
    keras-vit predict runs/fmnist photo1.jpg photo2.png --top-k 3
    keras-vit export runs/fmnist --output export/vit     # TF Serving SavedModel, export/vit/<version>/
    keras-vit serve export/vit --port 8501               # local TF-Serving-compatible REST server
    keras-vit predict --server http://localhost:8501 --model-name vit photo.jpg
    keras-vit explain runs/fmnist photo.png --output attention.png   # attention rollout heat map
    keras-vit inspect runs/fmnist --output inspect/                  # learned embeddings as PNGs
    keras-vit predict --variant B/16 --weights imagenet photo.jpg   # ImageNet classes, no run needed
    keras-vit train --data photos/ --variant B/16 --weights imagenet21k --image-size 384   # fine-tune
    keras-vit weights list                                            # the named checkpoints

Bad arguments end the command with exit code 2 and a one-line error.
Each subcommand calls one function of the module that does the work; the
module is over 400 lines because the parser spells out every flag's help.
"""

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_vit._backend import is_out_of_memory  # noqa: E402 -- after the log level, before TensorFlow loads


def _bool_flag(parser, name, help_text, default=None):
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                        default=default, help=help_text)


def _run_arguments(parser):
    parser.add_argument("run", help="run directory written by 'keras-vit train'")
    parser.add_argument("--model", choices=("best", "last"), default="last",
                        help="the run's final model (default) or its best-validation checkpoint")


def _tta_argument(parser, default_help):
    parser.add_argument("--tta", choices=("none", "flip"),
                        help="test-time augmentation: 'flip' averages the probabilities of each image and "
                             f"its mirror image (twice the compute), 'none' the image alone; default: {default_help}")


def _pretrained_arguments(parser):
    parser.add_argument("--weights", help="instead of a run: pretrained weights, 'imagenet', 'imagenet21k', a tag "
                                          "of 'keras-vit weights list', hf://ORG/NAME or a checkpoint file")
    parser.add_argument("--variant", help="the model size of --weights, e.g. 'B/16' (not for hf://)")
    parser.add_argument("--image-size", type=int, help="input resolution with --weights (default: the checkpoint's)")


def _precision_arguments(parser):
    # Spelled out (not keras_vit.inference.PRECISIONS) so that parsing imports
    # no Keras; a test keeps the two the same.
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "int8"),
                        help="compute at this precision (inputs and outputs stay float32): bfloat16 is faster "
                             "where keras_vit.bfloat16_cpu() is True (AMX, or AVX-512-BF16 on AMD) and slower "
                             "elsewhere; int8 is Keras' quantize(); auto: bfloat16 where it is faster, else "
                             "float32; default: the model as saved")
    parser.add_argument("--mixed-precision", action="store_true", help=argparse.SUPPRESS)  # = --precision bfloat16


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit", description="Train, evaluate and use Vision Transformers (keras_vit)."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,predict,export,serve,explain,inspect,weights}")

    train = sub.add_parser(
        "train", help="train a ViT (default: the digits data set)",
        description="Train a ViT with model.fit on tf.data. Settings left out come from the "
                    "data set's recipe (digits, fashion_mnist) or the defaults. Rerunning the "
                    "same command resumes an interrupted run.",
    )
    train.add_argument("--data", default="digits",
                       help="'digits' (default), 'fashion_mnist', a folder of class folders, "
                            "or a TFDS name prepared in --data-dir")
    train.add_argument("--data-dir", help="TFDS data directory holding prepared data sets")
    train.add_argument("--download", action="store_true", help="let TFDS download a missing data set")
    train.add_argument("--output", help="run directory (default: runs/<data>)")
    train.add_argument("--overwrite", action="store_true",
                       help="train again into an --output that holds a finished run")
    train.add_argument("--variant", help="a standard ViT, e.g. 'S/16' (default: the recipe's small ViT)")
    for name in ("patch-size", "hidden-dim", "num-layers", "num-heads", "mlp-dim", "image-size"):
        train.add_argument(f"--{name}", type=int, help=f"model {name.replace('-', ' ')}")
    train.add_argument("--weights", help="checkpoint to start from (.npz, .safetensors, .weights.h5)")
    _bool_flag(train, "freeze-backbone", "train only the head (fine-tuning)", default=False)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help="global batch size")
    train.add_argument("--learning-rate", type=float, help="peak learning rate")
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--warmup-epochs", type=float, help="linear warm-up (default: the recipe's)")
    train.add_argument("--label-smoothing", type=float, default=0.1)
    train.add_argument("--clipnorm", type=float, default=1.0, help="global-norm gradient clipping")
    train.add_argument("--dropout-rate", type=float, default=0.0)
    train.add_argument("--drop-path-rate", type=float, help="stochastic depth")
    _bool_flag(train, "flip", "random horizontal flips")
    train.add_argument("--crop-scale", type=float, help="random resized crop keeping >= this fraction")
    train.add_argument("--translate", type=float, default=0.0,
                       help="random translation by up to this fraction of each side, zeros filled in (0: off)")
    train.add_argument("--rand-augment", type=float, default=0.0, help="RandAugment strength in [0, 1]")
    train.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off)")
    train.add_argument("--cutmix", type=float, default=0.0, help="CutMix factor (0: off)")
    train.add_argument("--random-erasing", type=float,
                       help="probability of erasing a random rectangle of each image (default: the recipe's)")
    _tta_argument(train, "the recipe's (fashion_mnist: flip; others: none); the final test evaluation only")
    _bool_flag(train, "mixed-precision",
               "mixed_bfloat16 on CPU/TPU, mixed_float16 with loss scaling on GPU", default=False)
    train.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                       help="XLA compilation")
    train.add_argument("--strategy", default="auto",
                       help="TensorFlow backend: auto, default, one_device, mirrored, multi_worker (TF_CONFIG) "
                            "or tpu; JAX backend (KERAS_BACKEND=jax): auto, default, data_parallel or "
                            "model_parallel (Keras' distribution API)")
    train.add_argument("--model-parallel", type=int, default=2,
                       help="with --strategy model_parallel: devices sharing one copy of the model, its "
                            "attention heads and MLP split over them (default: 2)")
    train.add_argument("--validation-split", type=float, default=0.1)
    train.add_argument("--bad-images", choices=("error", "skip"), default="error",
                       help="files of a folder data set that cannot be read as images: fail before "
                            "training, naming them (default), or skip them with a warning")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=float, default=10.0, metavar="SECONDS",
                       help="write last.keras and the backup (for resuming) at the end of an epoch once "
                            "this many seconds have passed since the last write, and after the last epoch "
                            "(default: 10; 0: every epoch). best.keras is written whenever it improves")
    train.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                       help="Keras progress: 1 bars, 2 a line per epoch")

    evaluate = sub.add_parser("evaluate", help="test accuracy, loss and confusion matrix of a run",
                              description="Evaluate a run's best model on its data set's test split; "
                                          "writes evaluation.json and confusion.png into the run.")
    _run_arguments(evaluate)
    _tta_argument(evaluate, "the run's own (as its test accuracy was measured)")
    _precision_arguments(evaluate)

    predict = sub.add_parser(
        "predict", help="classify image files with a run's model, pretrained weights or a server",
        usage="keras-vit predict [-h] [--top-k K] [--model {best,last}] RUN IMAGE [IMAGE ...]\n"
              "       keras-vit predict [-h] [--top-k K] --variant B/16 --weights imagenet IMAGE [IMAGE ...]\n"
              "       keras-vit predict [-h] [--top-k K] --server URL --model-name NAME IMAGE [IMAGE ...]",
        description="Print the top-k classes of each image, from a run's model (RUN IMAGE ...), "
                    "from pretrained weights (--weights imagenet --variant B/16 IMAGE ...: ImageNet's "
                    "class names) or from a TF Serving REST server (--server URL --model-name NAME IMAGE ...).",
    )
    predict.add_argument("inputs", nargs="+", metavar="RUN IMAGE",
                         help="the run directory (without --server or --weights), then JPEG, PNG, GIF, BMP "
                              "or WebP files")
    _pretrained_arguments(predict)
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--model", choices=("best", "last"), default="last",
                         help="the run's final model (default) or its best-validation checkpoint")
    predict.add_argument("--server", help="TF Serving (or keras-vit serve) URL, e.g. http://localhost:8501")
    predict.add_argument("--model-name", help="the served model's name (with --server)")
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds per request (with --server)")
    _precision_arguments(predict)
    _tta_argument(predict, "the run's own (not with --server: the served model decides)")

    export = sub.add_parser(
        "export", help="write a run's model as a TF Serving SavedModel version",
        description="Write BASE/<version>/ (saved_model.pb, variables/) that TF Serving loads as it is: "
                    "signatures serving_default (image_bytes), predict_images (float pixels) and "
                    "embeddings, with decoding, resizing and class names inside the graph.",
    )
    export.add_argument("run", nargs="?", help="run directory written by 'keras-vit train' (or --weights)")
    export.add_argument("--model", choices=("best", "last"), default="last",
                        help="the run's final model (default) or its best-validation checkpoint")
    _pretrained_arguments(export)
    export.add_argument("--output", help="model base directory (default: export/<run name or model name>)")
    export.add_argument("--version", type=int, dest="export_version", metavar="N",
                        help="version number (default: the next free one)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --version")
    export.add_argument("--top-k", type=int, help="classes in the top_k_* outputs (default: 5)")
    _precision_arguments(export)
    export.add_argument("--jit-compile", action="store_true",
                        help="compile the model's computation with XLA (int8: about 4x faster); TF Serving's "
                             "CPU builds then need --xla_cpu_compilation_enabled=true")
    _tta_argument(export, "the run's own")

    serve = sub.add_parser(
        "serve", help="serve exported versions over TF Serving's REST API (development)",
        description="A local stand-in for TF Serving (the production path: docker run -p 8501:8501 "
                    "-v $PWD/BASE:/models/NAME -e MODEL_NAME=NAME tensorflow/serving). Serves the newest "
                    "version under BASE and picks up new ones without a restart.",
    )
    serve.add_argument("base", help="model base directory holding integer version folders")
    serve.add_argument("--model-name", help="name in the URLs (default: BASE's folder name)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=8501)
    serve.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    serve.add_argument("--max-body-mb", type=float, default=10.0, help="larger requests get HTTP 413")
    serve.add_argument("--max-images", type=int, default=64, help="images per request (more: HTTP 413)")
    serve.add_argument("--max-pending", type=int, default=32,
                       help="requests waiting for or in the model; more get HTTP 503 and Retry-After")
    serve.add_argument("--read-timeout", type=float, default=30.0,
                       help="seconds a client has to send its request body (slower: HTTP 408)")
    serve.add_argument("--request-timeout", type=float, default=60.0,
                       help="seconds from a request's body to its answer (later: HTTP 504, as TF Serving)")
    serve.add_argument("--idle-timeout", type=float, default=30.0,
                       help="seconds a kept-alive connection may stay idle before it is closed")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a new connection has to send its request headers (slower: closed)")
    serve.add_argument("--max-connections", type=int, default=256,
                       help="open connections; more are answered HTTP 503 with Retry-After and closed")
    serve.add_argument("--max-request-megapixels", type=float, default=128.0,
                       help="pixels a request's images may declare in all, in millions, read from their "
                            "headers before decoding (more: HTTP 413)")

    explain = sub.add_parser(
        "explain", help="attention heat maps of a run's model on images (PNG)",
        description="Write a PNG with, for each image, the image, the attention heat map and the overlay. "
                    "Default: attention rollout through all blocks (Abnar & Zuidema, 2020); with --layer, "
                    "that block's class-token attention (--head: one head, else their mean).",
    )
    _run_arguments(explain)
    explain.add_argument("images", nargs="+", help="JPEG, PNG, BMP or GIF files")
    explain.add_argument("--output", default="attention.png", help="PNG to write (default: attention.png)")
    explain.add_argument("--layer", type=int, help="one block (0-based; negative counts from the last)")
    explain.add_argument("--head", type=int, help="one attention head of --layer")
    explain.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                         help="how rollout fuses the heads")
    explain.add_argument("--discard-ratio", type=float, default=0.9,
                         help="fraction of the lowest attentions rollout drops (default 0.9)")

    weights = sub.add_parser(
        "weights", help="list or download the named pretrained checkpoints",
        description="The original ViT and AugReg checkpoints by tag (as timm names them), from Google's "
                    "vit_models bucket (KERAS_VIT_WEIGHTS_BASE_URL: a mirror) into Keras' cache "
                    "($KERAS_HOME/models).",
    )
    weights_sub = weights.add_subparsers(dest="weights_command", metavar="{list,download}", required=True)
    weights_list = weights_sub.add_parser("list", help="print the table of named checkpoints")
    weights_list.add_argument("--variant", help="one size, e.g. 'B/16' (default: all)")
    weights_download = weights_sub.add_parser(
        "download", help="download a named checkpoint into the cache (e.g. before going offline)")
    weights_download.add_argument("tag", help="'imagenet', 'imagenet21k' or a tag of 'keras-vit weights list'")
    weights_download.add_argument("--variant", required=True, help="the size, e.g. 'B/16'")
    weights_download.add_argument("--image-size", type=int,
                                  help="the resolution, where the tag has several (224, 384)")

    inspect = sub.add_parser(
        "inspect", help="pictures of a run's learned embeddings (PNG)",
        description="Write position_embedding.png (cosine similarity of the position embeddings, as "
                    "Figure 7 of the ViT paper) and patch_embedding.png (principal components of the "
                    "patch-embedding filters) into --output; the run's curves.png has the learning curves.",
    )
    _run_arguments(inspect)
    inspect.add_argument("--output", default="inspect", help="folder for the PNGs (default: inspect/)")
    inspect.add_argument("--components", type=int, default=28, help="principal components to show")
    return parser


def _explain(args):
    from keras_vit import runs

    path, _, predictions = runs.explain_run(
        args.run, args.images, args.output, layer=args.layer, head=args.head, head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio, which=args.model,
    )
    for image, (name, probability) in zip(args.images, predictions):
        print(f"{image}: {name} {probability:.4f}")
    print(f"wrote {path}")


def _inspect(args):
    from keras_vit import runs

    if args.components < 1:
        raise ValueError(f"--components must be >= 1, received {args.components}.")
    for name, path in runs.inspect_run(args.run, args.output, which=args.model, count=args.components).items():
        print(f"{name}: {path}")


def _weights(args):
    from keras_vit.weights import pretrained

    if args.weights_command == "list":
        pretrained.list_weights(args.variant)
        return
    entry = pretrained.resolve(pretrained.standard_variant(args.variant), args.tag, args.image_size)
    path = pretrained.fetch(entry)
    print(f"{entry.timm_name}: {path}")


def _train(args):
    from keras_vit import runs

    fields = {f.name for f in dataclasses.fields(runs.TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["jit_compile"] = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    config = runs.TrainConfig(**values).resolved()
    print(f"keras-vit train: data={config.data} output={config.output} "
          f"model={config.variant or 'recipe'} (patch {config.patch_size}, width {config.hidden_dim}, "
          f"depth {config.num_layers}, heads {config.num_heads}, MLP {config.mlp_dim}) "
          f"image_size={config.image_size} epochs={config.epochs} batch={config.batch_size}",
          flush=True)
    results = runs.train(config).results
    tta = "" if results["tta"] == "none" else \
        f" with {results['tta']} TTA ({results['test_accuracy_without_tta']:.4f} without)"
    print(f"test accuracy {results['test_accuracy']:.4f}{tta} (best-validation checkpoint "
          f"{results['best_checkpoint_test_accuracy']:.4f}), test loss {results['test_loss']:.4f}, "
          f"{results['epochs']} epochs, wall time {results['wall_time_s']:.1f} s "
          f"({'resumed' if results['resumed'] else 'fresh run'}), run in {config.output}")


def _evaluate(args):
    from keras_vit import runs

    started = time.time()
    result = runs.evaluate(args.run, which=args.model, tta=args.tta, precision=_precision(args))
    tta = "" if result["tta"] == "none" else f" with {result['tta']} TTA"
    print(f"test accuracy {result['accuracy']:.4f}{tta} ({result['precision']}), test loss {result['loss']:.4f} on "
          f"{result['num_examples']} images; confusion matrix {result['confusion_png']} "
          f"({time.time() - started:.1f} s)")


def _precision(args):
    """The precision asked for (`--precision`, or the old `--mixed-precision`)."""
    precision = args.precision
    if args.mixed_precision:
        if precision not in (None, "bfloat16"):
            raise ValueError(f"--mixed-precision means --precision bfloat16; received --precision {precision} too.")
        precision = "bfloat16"
    if precision == "bfloat16":
        from keras_vit import inference

        if not inference.bfloat16_cpu():
            # The user asked for it: keep it, but say it is the slow choice here.
            print("keras-vit: warning: this CPU has no fast bfloat16 (keras_vit.bfloat16_cpu() is False: "
                  "neither AMX nor AMD's AVX-512-BF16); mixed_bfloat16 will likely run slower than float32",
                  file=sys.stderr)
    return precision


def _print_ranked(path, ranked):
    print(f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in ranked))


def _predict(args):
    if args.server:
        if args.tta is not None:
            raise ValueError("--tta applies to a run's model; with --server the exported model decides "
                             "(keras-vit export --tta).")
        if not args.model_name:
            raise ValueError("--server needs --model-name (the served model's name).")
        if args.precision or args.mixed_precision:
            raise ValueError("--precision applies to a run's model or --weights; with --server the exported "
                             "model decides (keras-vit export --precision).")
        from keras_vit import serving

        if args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, received {args.top_k}.")
        with serving.Client(args.server, args.model_name, timeout=args.timeout) as client:
            predictions = client.predict(args.inputs)
        for path, prediction in zip(args.inputs, predictions):
            _print_ranked(path, list(zip(prediction.labels, prediction.scores))[:args.top_k])
        return
    if args.weights:
        from keras_vit import runs
        from keras_vit.weights import pretrained

        model = pretrained.classifier(args.weights, args.variant, args.image_size)
        predictions = runs.classify(model, args.inputs, top_k=args.top_k,
                                    precision=_precision(args), tta=args.tta or "none")
        for path, ranked in zip(args.inputs, predictions):
            _print_ranked(path, ranked)
        return
    _refuse_without_weights(args)
    if len(args.inputs) < 2:
        raise ValueError("predict needs a run directory and at least one image (or --weights, or --server URL).")
    from keras_vit import runs

    run, images = args.inputs[0], args.inputs[1:]
    predictions = runs.predict(run, images, top_k=args.top_k, which=args.model,
                               precision=_precision(args), tta=args.tta)
    for path, ranked in zip(images, predictions):
        _print_ranked(path, ranked)


def _refuse_without_weights(args):
    for name in ("variant", "image_size"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} applies to --weights; a run's model has its own.")


def _export(args):
    from keras_vit import export

    if args.weights:
        if args.run:
            raise ValueError(f"give a run directory or --weights, not both (received {args.run!r} and "
                             f"--weights {args.weights}).")
        from keras_vit import inference
        from keras_vit.weights import pretrained

        model = pretrained.classifier(args.weights, args.variant, args.image_size)
        precision = _precision(args)
        if precision is not None:
            model = inference.with_precision(model, precision, copy=False)
        path = export.export_saved_model(model, args.output or f"export/{model.name}",
                                         version=args.export_version, overwrite=args.overwrite,
                                         top_k=args.top_k, tta=args.tta or "none",
                                         jit_compile=args.jit_compile)
        print(f"exported {model.name} ({args.weights}) to {path}")
        return
    _refuse_without_weights(args)
    if not args.run:
        raise ValueError("export needs a run directory or --weights (e.g. --variant B/16 --weights imagenet).")
    from keras_vit import runs

    path = runs.export_run(args.run, args.output, version=args.export_version, overwrite=args.overwrite,
                           top_k=args.top_k, which=args.model,
                           precision=_precision(args), tta=args.tta, jit_compile=args.jit_compile)
    print(f"exported {args.run} ({args.model} model) to {path}")


def _serve(args):
    from keras_vit import serving

    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be > 0, received {args.max_body_mb}.")
    if not args.max_request_megapixels > 0:
        raise ValueError(f"--max-request-megapixels must be > 0, received {args.max_request_megapixels}.")
    server = serving.Server(
        args.base, model_name=args.model_name, host=args.host, port=args.port,
        poll_seconds=args.poll_seconds, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_images=args.max_images, max_pending=args.max_pending, read_timeout=args.read_timeout,
        request_timeout=args.request_timeout, idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout, max_connections=args.max_connections,
        max_request_pixels=max(1, round(args.max_request_megapixels * 1_000_000)),
    )
    import logging

    # One line per request on stderr (aiohttp's access-log format).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    serving.access_logger.addHandler(handler)
    serving.access_logger.setLevel(logging.INFO)
    server.start()
    version = server.version
    print(f"keras-vit serve: model {server.model_name!r} from {server.base_dir} "
          f"({'version ' + str(version) if version else 'no version yet: waiting for one'}) "
          f"on {server.url}/v1/models/{server.model_name} -- a development server; "
          f"use TF Serving in production. Ctrl-C stops.", flush=True)
    server.serve_forever()


def main(argv=None):
    """Runs the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from keras_vit.version import __version__

        print(f"keras-vit {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        try:
            {"train": _train, "evaluate": _evaluate, "predict": _predict, "export": _export,
             "serve": _serve, "explain": _explain, "inspect": _inspect, "weights": _weights}[args.command](args)
        except Exception as error:  # noqa: BLE001 -- only out-of-memory errors are handled here
            if not is_out_of_memory(error):
                raise
            first = (" ".join(str(error).split()) or type(error).__name__)[:300]
            print(f"keras-vit {args.command}: error: out of memory ({type(error).__name__}: {first}). "
                  "Try a smaller --batch-size, --image-size or model.", file=sys.stderr)
            return 2
    # ImportError: a feature whose framework is missing (export and serve
    # without TensorFlow) names what to install in one line.
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        message = " ".join(str(error).split())
        print(f"keras-vit {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
