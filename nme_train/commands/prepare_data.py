"""Prepares datasets that can be had offline into TFDS array_record form.

    nme-prepare-data digits [--data_dir DIR]
    nme-prepare-data fashion_mnist --from /usr/share/datasets/fashion-mnist \
        [--data_dir DIR]
    nme-prepare-data synthetic_imagenet --data_dir DIR [--train 10000] \
        [--validation 1000] [--short_side 400,500] [--store_short_side N] [--processes N]

`digits` ships inside scikit-learn (the trainer also prepares it on first
use). `fashion_mnist` reads the four original IDX files (gzipped or not),
e.g. from Debian's package dataset-fashion-mnist, and writes the TFDS
`fashion_mnist` dataset that the standard reader serves. DIR defaults to
$TFDS_DATA_DIR or ~/tensorflow_datasets.

`synthetic_imagenet` writes a TFDS `imagenet2012` of procedural JPEGs with
ImageNet's sizes (short side 400-500 px, ~110 KB each; docs/imagenet.md): the
real ImageNet pipeline and configs run on it offline. It needs an explicit
--data_dir, so that it never sits where a real ImageNet is looked for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from nme_train.data.datasets import default_data_dir
from nme_train.data.prepare import (
    FASHION_MNIST_DEBIAN_DIR,
    prepare_digits,
    prepare_fashion_mnist,
    prepare_synthetic_imagenet,
)
from nme_train.data.tfds_writer import writable_in_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["digits", "fashion_mnist", "synthetic_imagenet"])
    parser.add_argument("--from", dest="source", default=FASHION_MNIST_DEBIAN_DIR,
                        help="directory of the IDX files (fashion_mnist)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir to write into")
    synthetic = parser.add_argument_group("synthetic_imagenet")
    synthetic.add_argument("--train", type=int, default=10_000, help="training images")
    synthetic.add_argument("--validation", type=int, default=1_000, help="validation images")
    synthetic.add_argument("--classes", type=int, default=1000, help="labels used (<= 1000)")
    synthetic.add_argument("--short_side", default="400,500",
                           help="range of the short side in pixels, LO,HI")
    synthetic.add_argument("--store_short_side", type=int, default=None,
                           help="store images shrunk to this short side (pre-resized storage)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                           help="encoding processes")
    args = parser.parse_args(argv)
    if args.dataset == "synthetic_imagenet":
        return _synthetic(args)
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


def _synthetic(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"prepare_data: error: {message}", file=sys.stderr)
        return 1

    if not args.data_dir:
        return fail("synthetic_imagenet needs --data_dir: it writes a dataset named "
                    "imagenet2012, which must not stand where a real ImageNet is looked for")
    try:
        lo, hi = (int(v) for v in args.short_side.split(","))
    except ValueError:
        return fail(f"--short_side {args.short_side!r}: give two integers LO,HI (e.g. 400,500)")
    if not 8 <= lo <= hi:
        return fail(f"--short_side {args.short_side!r}: need 8 <= LO <= HI")
    if args.train < 1 or args.validation < 1 or not 1 <= args.classes <= 1000:
        return fail("--train and --validation must be >= 1 and --classes in 1..1000")
    if args.store_short_side is not None and args.store_short_side < 8:
        return fail("--store_short_side must be >= 8 pixels")
    side = (lo + hi) / 2 if args.store_short_side is None else min(args.store_short_side, hi)
    estimate = args.train * 115e3 * (side / 450) ** 2  # bytes of the larger split
    if estimate > writable_in_memory():
        return fail(f"--train {args.train}: the split would take about {estimate / 2**30:.1f} "
                    f"GiB, more than the {writable_in_memory() / 2**30:.1f} GiB the TFDS writer "
                    "may hold in memory here (it spills through TensorFlow, not installed); "
                    "lower --train or --store_short_side")
    start = time.perf_counter()
    path = prepare_synthetic_imagenet(
        args.data_dir, args.train, args.validation, args.classes, (lo, hi),
        args.store_short_side, args.seed, args.processes)
    files = [os.path.join(path, f) for f in os.listdir(path) if "array_record" in f]
    size = sum(os.path.getsize(f) for f in files)
    print(f"prepared synthetic imagenet2012 in {path}: {args.train} + {args.validation} "
          f"images, {size / 2**20:.0f} MiB ({size / (args.train + args.validation) / 1e3:.0f} "
          f"KB per image) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
