"""`python -m keras_vit ...` runs the `keras-vit` command line."""

import sys

from keras_vit.cli import main

sys.exit(main())
