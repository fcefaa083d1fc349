"""Measures the ImageNet input pipeline: images/s per process and per CPU core.

    nme-prepare-data synthetic_imagenet --data_dir DIR     # once
    python tools/bench_pipeline.py --data_dir DIR [--paths full,crop] [--workers 0,1,2] \
        [--decoders pil,simplejpeg]

Runs the trainer's own training pipeline (`train_batches` with the settings
of configs/imagenet_resnet50.py: read, decode, Inception crop, flip, resize
to 224, batching) for one process of a job, for every path (`crop`: the
crop chosen from the header and decoded at the smallest DCT scale that
covers it, `config.data.crop_decode=True`; `full`: every JPEG decoded in
full, then cropped), decoder and grain worker setting, and reports

- images/s of the process (wall clock, after `--warmup` batches: the read-
  ahead buffer holds batches made before the clock starts, so the timing
  starts once the consumer waits for each batch),
- CPU cores busy meanwhile: the CPU time of the process and its worker
  processes over the wall time,
- images/s per busy core, and the cores one accelerator needs at
  `--target` images/s (6,703: ResNet-50 bf16 on one H200, docs/benchmarks.md),
- the decoder alone: milliseconds per image on one core.

Then, on one core and per image (medians over `--profile_images` images
and the rounds), the stages of each path: reading the record, the header,
decoding (in full, or at the window's DCT scale), cropping and resizing,
flipping and stacking the batch, and the transform end to end; the share
of crops decoded at each DCT scale; and the pixel difference between the
paths (mean absolute difference per pixel, in levels of 255), for the
training crops and the evaluation's centre crop.

Each setting is measured `--rounds` times, rounds interleaving the settings
so that machine noise hits them alike; figures are medians.

Prints a table and writes one JSON line per setting to `--out` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live children (grain's worker processes),
    from /proc. Scanning /proc costs this process CPU time of its own: callers read
    `time.process_time()` on the far side of the scan (see pipeline_rate)."""
    total = 0.0
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # from the state field on
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def pipeline_rate(config, batch: int, steps: int, warmup: int) -> dict:
    """Images/s and busy cores of `steps` training batches after `warmup` ones."""
    from nme_train.data import DATASETS
    from nme_train.data.pipeline import train_batches

    spec = DATASETS["imagenet2012"]
    it = train_batches(spec, config, batch, seed=0, start_step=0, process_index=0,
                       process_count=1)
    for _ in range(warmup):
        next(it)
    children = children_cpu_seconds()
    own, start = time.process_time(), time.perf_counter()
    for _ in range(steps):
        out = next(it)
    wall = time.perf_counter() - start
    own = time.process_time() - own  # read before the scan below, as it was after the first
    busy_cores = (own + children_cpu_seconds() - children) / wall
    assert out["image"].shape == (batch, 224, 224, 3)
    del it
    return {"images_per_s": steps * batch / wall, "busy_cores": busy_cores,
            "images_per_core_s": steps * batch / wall / max(busy_cores, 1e-9), "wall_s": wall}


def decode_ms(data_dir: str, decoder: str, images: int, rounds: int) -> float:
    """Median over rounds of the milliseconds one core takes to decode one image in full."""
    from nme_train.data.decode import jpeg_decoder

    source = _jpeg_source(data_dir, "train")
    blobs = [source[i]["image"] for i in range(min(images, len(source)))]
    decode = jpeg_decoder(decoder).decode
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for blob in blobs:
            decode(blob)
        times.append((time.perf_counter() - start) / len(blobs) * 1e3)
    return statistics.median(times)


def stage_profile(data_dir: str, decoder_name: str, paths: list[str], images: int,
                  rounds: int, batch: int) -> dict:
    """One core's milliseconds per image in each stage of each path (medians over rounds of
    the mean over `images` training examples), the DCT scales used, and the pixel difference
    between the paths on the same windows."""
    from nme_train.data import augment
    from nme_train.data.decode import as_array, dct_scale, jpeg_decoder, resample_window
    from nme_train.data.pipeline import _JpegTransform

    size = 224
    decoder = jpeg_decoder(decoder_name)
    source = _jpeg_source(data_dir, "train")
    keys = list(range(min(images, len(source))))
    blobs = [source[k]["image"] for k in keys]
    params = augment.draw("inception_crop_flip", np.random.default_rng(0), len(keys))
    sizes = [decoder.size(b) for b in blobs]
    windows = [augment.inception_window(*hw, params["area"][i], params["log_aspect"][i],
                                        params["corner"][i]) for i, hw in enumerate(sizes)]
    scales = [dct_scale(w, size, decoder.scales) for w in windows]
    full = [as_array(decoder.decode(b)) for b in blobs]
    scaled = [decoder.decode(b, s) for b, s in zip(blobs, scales)]
    flips = params["flip"]
    crops = [resample_window(im, w, hw, size) for im, w, hw in zip(scaled, windows, sizes)]

    def ms(stage) -> float:
        times = []
        for _ in range(rounds):
            start = time.process_time()
            for i in range(len(keys)):
                stage(i)
            times.append((time.process_time() - start) / len(keys) * 1e3)
        return statistics.median(times)

    def flip_stack(i: int) -> None:  # the full path flips in numpy as it stacks
        if i % batch == 0:
            np.stack([c[:, ::-1] if f else c for c, f in zip(crops[i:i + batch],
                                                             flips[i:i + batch])])

    def stack(i: int) -> None:  # the crop path flips as it resamples
        if i % batch == 0:
            np.stack(crops[i:i + batch])

    shared = {"read": ms(lambda i: source[keys[i]]),
              "window": ms(lambda i: augment.inception_window(
                  *sizes[i], params["area"][i], params["log_aspect"][i], params["corner"][i]))}
    out: dict = {}
    for path in paths:
        transform = _JpegTransform(decoder, "inception_crop_flip", size, path == "crop")
        if path == "full":
            stages = {"decode": ms(lambda i: decoder.decode(blobs[i])),
                      "crop_resize": ms(lambda i: augment.inception_crop(
                          full[i], size, params["area"][i], params["log_aspect"][i],
                          params["corner"][i])),
                      "flip_stack": ms(flip_stack)}
        else:
            stages = {"header": ms(lambda i: decoder.size(blobs[i])),
                      "decode": ms(lambda i: decoder.decode(blobs[i], scales[i])),
                      "crop_resize_flip": ms(lambda i: resample_window(
                          scaled[i], windows[i], sizes[i], size, flips[i])),
                      "stack": ms(stack)}
        stages = {"read": shared["read"], "window": shared["window"], **stages}
        stages["sum"] = sum(stages.values())
        stages["transform"] = ms(lambda i, t=transform: t(blobs[i], params, i))
        out[path] = stages
    out["scale_shares"] = [round(scales.count(s) / len(scales), 3) for s in (1, 2, 4, 8)]
    out["train_mad"] = float(np.mean([
        np.abs(c.astype(np.float32) - augment.inception_crop(
            f, size, params["area"][i], params["log_aspect"][i], params["corner"][i])).mean()
        for i, (c, f) in enumerate(zip(crops, full))]))
    evaluation = _jpeg_source(data_dir, "validation")
    eval_blobs = [evaluation[k]["image"] for k in range(min(images, len(evaluation)))]
    center, old = (_JpegTransform(decoder, "none", size, c) for c in (True, False))
    out["eval_mad"] = float(np.mean([np.abs(center(b, {}, 0).astype(np.float32)
                                            - old(b, {}, 0)).mean() for b in eval_blobs]))
    return out


def _jpeg_source(data_dir: str, split: str):
    import tensorflow_datasets as tfds

    from nme_train.data import DATASETS
    from nme_train.data.datasets import find_dataset_dir

    builder = tfds.builder_from_directory(find_dataset_dir(DATASETS["imagenet2012"], data_dir))
    return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="holds a (synthetic) imagenet2012")
    parser.add_argument("--paths", default="full,crop",
                        help="full: decode in full, then crop; crop: config.data.crop_decode")
    parser.add_argument("--workers", default="0,1,2", help="grain worker processes to try")
    parser.add_argument("--decoders", default="pil,simplejpeg")
    parser.add_argument("--threads", type=int, default=None,
                        help="reader threads (default: the ImageNet config's)")
    parser.add_argument("--batch", type=int, default=128, help="images per batch")
    parser.add_argument("--steps", type=int, default=30, help="batches timed per setting")
    parser.add_argument("--warmup", type=int, default=None,
                        help="batches before timing (default: twice the prefetch buffer, so "
                             "that the timing starts and ends with the buffer drained)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per setting (rounds interleave the settings); "
                             "the median is reported with min and max")
    parser.add_argument("--target", type=float, default=6703.0,
                        help="images/s one accelerator consumes")
    parser.add_argument("--label", default="", help="a name for this dataset in the output")
    parser.add_argument("--profile_images", type=int, default=200,
                        help="images in the per-stage profile and the pixel comparison")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args(argv)

    from nme_train.cli import checkout_module
    from nme_train.data.decode import jpeg_decoder

    get_config = checkout_module("configs/imagenet_resnet50.py").get_config

    paths = args.paths.split(",")
    if set(paths) - {"full", "crop"}:
        print(f"bench_pipeline: error: --paths {args.paths!r}: choose from full, crop",
              file=sys.stderr)
        return 1
    settings = [(p, d, int(w)) for p in paths for d in args.decoders.split(",")
                for w in args.workers.split(",")]
    decode = {}
    for decoder in dict.fromkeys(d for _, d, _ in settings):
        try:
            jpeg_decoder(decoder)
        except ValueError as e:
            print(f"bench_pipeline: error: {e}", file=sys.stderr)
            return 1
        decode[decoder] = decode_ms(args.data_dir, decoder, images=200, rounds=3)
    rates: dict[tuple[str, str, int], list[dict]] = {s: [] for s in settings}
    for _ in range(args.rounds):
        for path, decoder, workers in settings:
            config = get_config().data
            config.data_dir, config.decoder, config.num_workers = args.data_dir, decoder, workers
            config.crop_decode = path == "crop"
            if args.threads is not None:
                config.num_threads = args.threads
            warmup = 2 * config.prefetch if args.warmup is None else args.warmup
            rates[path, decoder, workers].append(pipeline_rate(config, args.batch, args.steps,
                                                               warmup))
    rows = []
    for (path, decoder, workers), measured in rates.items():
        per_core = sorted(r["images_per_core_s"] for r in measured)
        median = {k: statistics.median(r[k] for r in measured) for k in measured[0]}
        row = {"dataset": args.label or args.data_dir, "path": path, "decoder": decoder,
               "workers": workers,
               "threads": config.num_threads, "batch": args.batch, "steps": args.steps,
               "rounds": args.rounds, "decode_ms_one_core": decode[decoder],
               "images_per_core_s_min": per_core[0], "images_per_core_s_max": per_core[-1],
               "cores_per_accelerator": args.target / median["images_per_core_s"],
               "machine_cores": os.cpu_count(), **median}
        rows.append(row)
        print(f"{path:>4} {decoder:>10} workers={workers}: "
              f"{median['images_per_s']:7.1f} img/s with "
              f"{median['busy_cores']:.2f} cores busy = {median['images_per_core_s']:6.1f} "
              f"img/s per core (min {per_core[0]:.1f}, max {per_core[-1]:.1f}); decode alone "
              f"{decode[decoder]:.2f} ms/img; {row['cores_per_accelerator']:.1f} cores per "
              f"accelerator at {args.target:.0f} img/s", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    for decoder in dict.fromkeys(d for _, d, _ in settings):
        profile = stage_profile(args.data_dir, decoder, paths, args.profile_images,
                                args.rounds, args.batch)
        for path in paths:
            stages = "  ".join(f"{k} {v:.3f}" for k, v in profile[path].items())
            print(f"{path:>4} {decoder:>10} one core, ms per image: {stages}", flush=True)
        print(f"{decoder:>10} crops decoded at scale 1/1, 1/2, 1/4, 1/8: "
              f"{profile['scale_shares']}; pixels, crop against full path: mean |difference| "
              f"{profile['train_mad']:.3f} (train crops), {profile['eval_mad']:.3f} "
              "(evaluation centre crops), levels of 255", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"dataset": args.label or args.data_dir, "decoder": decoder,
                                    "profile_images": args.profile_images,
                                    "rounds": args.rounds, **profile}) + "\n")
    best = max(rows, key=lambda r: r["images_per_core_s"])
    print(f"best: {best['path']} path, {best['decoder']}, {best['workers']} workers: "
          f"{best['images_per_core_s']:.1f} img/s per core -> "
          f"{np.ceil(best['cores_per_accelerator']):.0f} cores per accelerator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
