"""Prepares datasets that can be had offline into TFDS array_record form.

    python tools/prepare_data.py digits [--data_dir DIR]
    python tools/prepare_data.py fashion_mnist --from /usr/share/datasets/fashion-mnist \
        [--data_dir DIR]

`digits` ships inside scikit-learn (the trainer also prepares it on first
use). `fashion_mnist` reads the four original IDX files (gzipped or not),
e.g. from Debian's package dataset-fashion-mnist, and writes the TFDS
`fashion_mnist` dataset that the standard reader serves. DIR defaults to
$TFDS_DATA_DIR or ~/tensorflow_datasets.
"""

from __future__ import annotations

import argparse
import sys

from nme_train.data.datasets import default_data_dir
from nme_train.data.prepare import (
    FASHION_MNIST_DEBIAN_DIR,
    prepare_digits,
    prepare_fashion_mnist,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["digits", "fashion_mnist"])
    parser.add_argument("--from", dest="source", default=FASHION_MNIST_DEBIAN_DIR,
                        help="directory of the IDX files (fashion_mnist)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir to write into")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    if args.dataset == "digits":
        path = prepare_digits(data_dir)
    else:
        try:
            path = prepare_fashion_mnist(args.source, data_dir)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"prepared {args.dataset} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
