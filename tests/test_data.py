"""Data: embedded digits, IDX preparation, determinism, per-process shards, augmentation."""

import gzip
import io
import os
import struct

import numpy as np
import PIL.Image
import pytest
from conftest import decode_index, run_command

from nme_train.base_config import base_config
from nme_train.data import DATASETS, augment, eval_batches, split_size, train_batches
from nme_train.data import decode as decode_module
from nme_train.data.decode import (
    DCT_SCALES,
    DECODERS,
    as_array,
    dct_scale,
    decode_window,
    jpeg_decoder,
)
from nme_train.data.prepare import (
    prepare_fashion_mnist,
    prepare_synthetic_imagenet,
    read_idx,
    synthetic_jpeg,
)
from nme_train.data.tfds_writer import registered_features


def data_config(data_dir, **overrides):
    c = base_config().data  # every field the pipeline reads, with the trainer's defaults
    c.update(dict(name="cifar10", data_dir=data_dir, prefetch=2), **overrides)
    return c


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_digits_is_prepared_offline_with_fixed_split(data_dir):
    spec = DATASETS["digits"]
    assert split_size(spec, "train", data_dir) == 1500
    assert split_size(spec, "test", data_dir) == 297
    c = data_config(data_dir, name="digits")
    batches = list(eval_batches(spec, c, 100, 0, 1))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert images.shape == (300, 8, 8, 1) and mask.sum() == 297
    assert set(labels[mask > 0]) == set(range(10))
    # pixel values are the 17 levels round(v * 255 / 16) of the original 0..16 data
    levels = set(np.unique(images[mask > 0]))
    assert levels <= {round(v * 255 / 16) for v in range(17)} and len(levels) > 10


def test_a_slice_of_a_split_is_a_training_subset(data_dir):
    spec = DATASETS["digits"]
    split_size(spec, "train", data_dir)  # prepares the set
    assert split_size(spec, "train[:400]", data_dir) == 400
    c = data_config(data_dir, name="digits", train_split="train[:400]")
    first = take(train_batches(spec, c, 100, seed=0, start_step=0, process_index=0,
                               process_count=1), 8)  # two epochs of the 400
    whole = data_config(data_dir, name="digits")
    other = take(train_batches(spec, whole, 100, seed=0, start_step=0, process_index=0,
                               process_count=1), 8)
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
    with pytest.raises(ValueError, match=r"split 'train\[:abc\]'.*config.data.train_split"):
        split_size(spec, "train[:abc]", data_dir)
    with pytest.raises(ValueError, match="split 'validation' not in digits"):
        split_size(spec, "validation", data_dir)


def test_label_noise_relabels_a_fixed_fraction_of_the_split(data_dir):
    """One epoch of 400 digits with 25% noise: exactly 100 labels differ from the clean
    stream, each to another class; the same examples for any training seed and process
    count; evaluation keeps its labels."""
    spec = DATASETS["digits"]
    clean, noisy = (data_config(data_dir, name="digits", train_split="train[:400]",
                                label_noise=p, label_noise_seed=0) for p in (0.0, 0.25))

    def epoch(config, seed, process_count=1):
        shards = [take(train_batches(spec, config, 100, seed, 0, p, process_count), 4)
                  for p in range(process_count)]
        return (np.concatenate([np.concatenate([s[i]["image"] for s in shards])
                                for i in range(4)]),
                np.concatenate([np.concatenate([s[i]["label"] for s in shards])
                                for i in range(4)]))

    images, labels = epoch(clean, seed=0)
    noisy_images, noisy_labels = epoch(noisy, seed=0)
    assert np.array_equal(images, noisy_images)
    changed = labels != noisy_labels
    assert changed.sum() == 100 and set(noisy_labels) <= set(range(10))
    # the corrupted examples (identified by their pixels) are the same under another seed
    # and over two processes
    corrupted = {images[i].tobytes() for i in np.nonzero(changed)[0]}
    for seed, processes in ((1, 1), (0, 2)):
        imgs, lbls = epoch(clean, seed, processes)
        _, nlbls = epoch(noisy, seed, processes)
        assert {imgs[i].tobytes() for i in np.nonzero(lbls != nlbls)[0]} == corrupted
    evaluation = next(iter(eval_batches(spec, noisy, 100, 0, 1)))["label"]
    assert np.array_equal(evaluation, next(iter(eval_batches(spec, clean, 100, 0, 1)))["label"])


def test_same_seed_same_batches_and_other_seed_differs(cifar_dir):
    spec, c = DATASETS["cifar10"], data_config(cifar_dir, augment="pad_crop_flip")
    a = take(train_batches(spec, c, 16, seed=3, start_step=0, process_index=0,
                           process_count=1), 8)
    b = take(train_batches(spec, c, 16, seed=3, start_step=0, process_index=0,
                           process_count=1), 8)
    other = take(train_batches(spec, c, 16, seed=4, start_step=0, process_index=0,
                               process_count=1), 8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, other))


def test_start_step_resumes_the_stream(cifar_dir):
    spec, c = DATASETS["cifar10"], data_config(cifar_dir, augment="pad_crop_flip")
    full = take(train_batches(spec, c, 16, 0, 0, 0, 1), 10)
    resumed = take(train_batches(spec, c, 16, 0, 7, 0, 1), 3)
    for x, y in zip(full[7:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_cover_the_global_batch(cifar_dir, process_count):
    spec = DATASETS["cifar10"]
    c = data_config(cifar_dir)
    steps = 12  # two epochs of 96 examples at global batch 16
    single = take(train_batches(spec, c, 16, 0, 0, 0, 1), steps)
    shards = [take(train_batches(spec, c, 16, 0, 0, p, process_count), steps)
              for p in range(process_count)]
    for step in range(steps):
        parts = [decode_index(shards[p][step]["image"]) for p in range(process_count)]
        assert all(len(part) == 16 // process_count for part in parts)
        assert len(set(np.concatenate(parts))) == 16  # disjoint
        np.testing.assert_array_equal(np.concatenate(parts), decode_index(single[step]["image"]))
    epoch = np.concatenate([decode_index(b["image"]) for b in single[:6]])
    assert sorted(epoch) == list(range(96))  # one epoch visits every example once
    assert not np.array_equal(epoch, np.concatenate(
        [decode_index(b["image"]) for b in single[6:]]))  # and the next is reshuffled


def test_augmentation_does_not_depend_on_process_count(cifar_dir):
    spec, c = DATASETS["cifar10"], data_config(cifar_dir, augment="pad_crop_flip")
    single = take(train_batches(spec, c, 16, 0, 0, 0, 1), 3)
    halves = [take(train_batches(spec, c, 16, 0, 0, p, 2), 3) for p in range(2)]
    for step in range(3):
        np.testing.assert_array_equal(
            np.concatenate([halves[0][step]["image"], halves[1][step]["image"]]),
            single[step]["image"])
        assert single[step]["image"].shape == (16, 32, 32, 3)


def test_pad_crop_flip_moves_pixels_but_keeps_content(cifar_dir):
    spec = DATASETS["cifar10"]
    plain = next(train_batches(spec, data_config(cifar_dir), 32, 0, 0, 0, 1))["image"]
    aug = next(train_batches(spec, data_config(cifar_dir, augment="pad_crop_flip"), 32, 0, 0, 0,
                             1))["image"]
    assert aug.shape == plain.shape and aug.dtype == np.uint8
    assert not np.array_equal(aug, plain)
    assert (aug == 0).any()  # zero padding shows at the borders of shifted crops


def test_eval_pass_counts_every_example_once(cifar_dir):
    spec = DATASETS["cifar10"]
    for processes in (1, 2, 4):
        seen = []
        for p in range(processes):
            for batch in eval_batches(spec, data_config(cifar_dir), 16, p, processes):
                seen.extend(decode_index(batch["image"])[batch["mask"] > 0])
        assert sorted(seen) == list(range(40))


def test_imagenet_inception_crop_and_eval_resize(imagenet_dir):
    spec = DATASETS["imagenet2012"]
    c = data_config(imagenet_dir, name="imagenet2012", augment="inception_crop_flip",
                    image_size=32)
    batch = next(train_batches(spec, c, 8, 0, 0, 0, 1))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    evals = list(eval_batches(spec, c, 8, 0, 1))
    assert [b["image"].shape for b in evals] == [(8, 32, 32, 3)] * 2
    assert sum(b["mask"].sum() for b in evals) == 10
    plain = next(train_batches(spec, data_config(imagenet_dir, image_size=32), 8, 0, 0, 0, 1))
    assert plain["image"].shape == (8, 32, 32, 3)  # resize + centre crop without augmentation


def test_synthetic_imagenet_has_imagenet_files_and_sizes(imagenet_dir, tmp_path):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(f"{imagenet_dir}/imagenet2012/5.1.0")
    features, version = registered_features("imagenet2012")
    assert builder.info.features.to_json() == features.to_json() and version == "5.1.0"
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        "train": 24, "validation": 10}
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    ratios = set()
    for i in range(24):
        record = source[i]
        assert record["image"][:2] == b"\xff\xd8" and record["label"] == i  # JPEG, own label
        assert record["file_name"] == f"synthetic_train_{i:08d}.JPEG".encode()
        with PIL.Image.open(io.BytesIO(record["image"])) as image:
            w, h = image.size
        assert 40 <= min(h, w) <= 90
        ratios.add(round(max(h, w) / min(h, w), 1))
    assert ratios <= {1.0, 1.3, 1.4, 1.5, 1.6} and len(ratios) > 1
    # a pure function of (seed, split, index, label); the default size is ImageNet's
    assert synthetic_jpeg(0, 0, 3, 3, (40, 90)) == source[3]["image"]
    assert synthetic_jpeg(1, 0, 3, 3, (40, 90)) != source[3]["image"]
    full = [synthetic_jpeg(0, 0, i, i) for i in range(6)]
    assert 80e3 < np.mean([len(b) for b in full]) < 140e3  # ImageNet's mean is ~110 KB
    for blob in full:
        with PIL.Image.open(io.BytesIO(blob)) as image:
            assert 400 <= min(image.size) <= 500
    with PIL.Image.open(io.BytesIO(synthetic_jpeg(0, 0, 0, 0, store_short_side=160))) as image:
        assert min(image.size) == 160
    # worker processes write the same dataset
    prepare_synthetic_imagenet(str(tmp_path), 24, 2, short_side=(40, 90), processes=2)
    again = tfds.builder_from_directory(f"{tmp_path}/imagenet2012/5.1.0").as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    assert [again[i]["image"] for i in range(24)] == [source[i]["image"] for i in range(24)]


def test_synthetic_imagenet_tool_refuses_bad_input(tmp_path):
    out = run_command("-m", "nme_train.commands.prepare_data", "synthetic_imagenet", "--train", "4")
    assert out.returncode == 1 and "needs --data_dir" in out.stderr
    out = run_command("-m", "nme_train.commands.prepare_data", "synthetic_imagenet", "--data_dir",
                      str(tmp_path), "--short_side", "400")
    assert out.returncode == 1 and "--short_side '400'" in out.stderr
    assert "Traceback" not in out.stderr and not os.listdir(tmp_path)


def _jpeg_source(imagenet_dir, split="validation"):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(f"{imagenet_dir}/imagenet2012/5.1.0")
    return (builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()}),
            builder.as_data_source(split))


def test_decoders_give_the_same_pixels(imagenet_dir):
    source, decoded = _jpeg_source(imagenet_dir)
    decoders = [jpeg_decoder(name) for name in DECODERS]
    for i in range(10):
        data, reference = source[i]["image"], decoded[i]["image"]  # TFDS's own decoding
        for decoder in decoders:
            np.testing.assert_array_equal(as_array(decoder.decode(data)), reference)
            assert decoder.size(data) == reference.shape[:2]
        for scale in DCT_SCALES:  # libjpeg rounds each side up: ceil(side / scale)
            scaled = [as_array(d.decode(data, scale)) for d in decoders]
            assert scaled[0].shape == (-(-reference.shape[0] // scale),
                                       -(-reference.shape[1] // scale), 3)
            for other in scaled[1:]:
                np.testing.assert_array_equal(other, scaled[0])
    with pytest.raises(ValueError, match="choose one of"):
        jpeg_decoder("turbo")


def test_dct_scale_is_the_smallest_that_keeps_the_output_resolution():
    assert dct_scale((0, 0, 448, 500), 224, DCT_SCALES) == 2  # 224 x 250 at 1/2
    assert dct_scale((0, 0, 447, 900), 224, DCT_SCALES) == 1  # 1/2 would give 223 rows
    assert dct_scale((0, 0, 1800, 1792), 224, DCT_SCALES) == 8
    assert dct_scale((0, 0, 100, 120), 224, DCT_SCALES) == 1  # upsampled at full scale
    assert dct_scale((0, 0, 1800, 1792), 224, (1,)) == 1  # a decoder without scaling


def test_decode_window_of_a_grayscale_jpeg_is_rgb_in_both_decoders():
    gray = (np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)
    blob = io.BytesIO()
    PIL.Image.fromarray(gray).save(blob, "JPEG")
    window = (10, 20, 280, 300)  # at 64 px: scale 4
    out = [decode_window(jpeg_decoder(n), blob.getvalue(), window, 64) for n in ("pil",
                                                                               "simplejpeg")]
    assert dct_scale(window, 64, DCT_SCALES) == 4 and out[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0][..., 0], out[0][..., 2])  # grey stays grey


class _Unscaled:
    """A decoder without scaled decoding: PIL's, limited to scale 1."""

    name, scales = "unscaled", (1,)

    def __init__(self):
        self._pil = jpeg_decoder("pil")

    def size(self, data):
        return self._pil.size(data)

    def decode(self, data, scale=1):
        assert scale == 1
        return self._pil.decode(data)


def test_decode_window_against_full_decode_crop_and_resize(imagenet_dir):
    """Whole-pixel windows at scale 1 give exactly the pixels of decoding in full, cropping and
    resizing; at a DCT scale they stay close. The reference is the full-decode path."""
    source, decoded = _jpeg_source(imagenet_dir, "train")
    rng = np.random.default_rng(0)
    params = augment.draw("inception_crop_flip", rng, 24)
    size, scaled, differences = 24, 0, []
    for i in range(24):
        data, full = source[i]["image"], decoded[i]["image"]
        window = augment.inception_window(*full.shape[:2], params["area"][i],
                                          params["log_aspect"][i], params["corner"][i])
        top, left, h, w = window
        reference = augment.resize(full[top:top + h, left:left + w], (size, size))
        np.testing.assert_array_equal(decode_window(_Unscaled(), data, window, size), reference)
        for name in ("pil", "simplejpeg"):
            out = decode_window(jpeg_decoder(name), data, window, size)
            assert out.shape == (size, size, 3) and out.dtype == np.uint8
            if dct_scale(window, size, DCT_SCALES) == 1:
                np.testing.assert_array_equal(out, reference)
            else:
                scaled += 1
                differences.append(np.abs(out.astype(float) - reference).mean())
    assert scaled >= 4 and max(differences) < 3.0  # of 255: smooth content, a few levels


def test_crop_decode_keeps_the_crops_of_the_full_decode(imagenet_dir, monkeypatch):
    """Same (seed, step): the same examples, windows and flips with and without crop_decode;
    pixels equal where no DCT scale applies, close where one does, in training and evaluation."""
    spec = DATASETS["imagenet2012"]
    config = dict(name="imagenet2012", augment="inception_crop_flip", image_size=24)
    old = data_config(imagenet_dir, crop_decode=False, **config)
    new = data_config(imagenet_dir, **config)
    full = take(train_batches(spec, old, 12, 3, 0, 0, 1), 4)
    crop = take(train_batches(spec, new, 12, 3, 0, 0, 1), 4)
    gaps = []
    for a, b in zip(full, crop):
        np.testing.assert_array_equal(a["label"], b["label"])
        gaps.append(np.abs(a["image"].astype(float) - b["image"]).mean())
    assert 0 < np.mean(gaps) < 1.5
    evals = [[b["image"].astype(float) for b in eval_batches(spec, c, 5, 0, 1)]
             for c in (old, new)]
    assert 0 < np.mean([np.abs(a - b).mean() for a, b in zip(*evals)]) < 2.0
    # a decoder without scaled decoding falls back to scale 1: the very same crops and pixels
    monkeypatch.setattr(decode_module.PilDecoder, "scales", (1,))
    unscaled = take(train_batches(spec, data_config(imagenet_dir, decoder="pil", **config), 12,
                                  3, 0, 0, 1), 4)
    for a, b in zip(full, unscaled):
        np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.parametrize("process_count", [2, 3])
def test_imagenet_pipeline_shards_are_disjoint_and_deterministic(imagenet_dir, process_count):
    spec = DATASETS["imagenet2012"]
    c = data_config(imagenet_dir, name="imagenet2012", augment="inception_crop_flip",
                    image_size=32)
    steps = 6  # three epochs of 24 examples at global batch 12
    single = take(train_batches(spec, c, 12, 5, 0, 0, 1), steps)
    again = take(train_batches(spec, c, 12, 5, 0, 0, 1), steps)
    shards = [take(train_batches(spec, c, 12, 5, 0, p, process_count), steps)
              for p in range(process_count)]
    for step in range(steps):
        assert single[step]["image"].shape == (12, 32, 32, 3)
        np.testing.assert_array_equal(single[step]["image"], again[step]["image"])
        labels = [shards[p][step]["label"] for p in range(process_count)]  # label = example
        assert all(len(part) == 12 // process_count for part in labels)
        assert len(set(np.concatenate(labels))) == 12  # disjoint
        np.testing.assert_array_equal(np.concatenate(labels), single[step]["label"])
        np.testing.assert_array_equal(
            np.concatenate([shards[p][step]["image"] for p in range(process_count)]),
            single[step]["image"])  # the same crops and flips, whoever reads the example
    epoch = np.concatenate([b["label"] for b in single[:2]])
    assert sorted(epoch) == list(range(24))


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                    *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    arrays = {}
    for prefix, n in (("train", 20), ("t10k", 10)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        _write_idx(str(src / f"{prefix}-images-idx3-ubyte.gz"), arrays[prefix][0])
        _write_idx(str(src / f"{prefix}-labels-idx1-ubyte.gz"), arrays[prefix][1])
    np.testing.assert_array_equal(read_idx(str(src / "t10k-labels-idx1-ubyte.gz")),
                                  arrays["t10k"][1])
    out = str(tmp_path / "tfds")
    prepare_fashion_mnist(str(src), out)
    spec = DATASETS["fashion_mnist"]
    batches = list(eval_batches(spec, data_config(out, name="fashion_mnist"), 10, 0, 1))
    np.testing.assert_array_equal(batches[0]["image"][..., 0], arrays["t10k"][0])
    np.testing.assert_array_equal(batches[0]["label"], arrays["t10k"][1])
    assert split_size(spec, "train", out) == 20


def test_missing_dataset_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build cifar100"):
        next(train_batches(DATASETS["cifar100"], data_config(str(tmp_path)), 8, 0, 0, 0, 1))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(imagenet_dir):
    spec = DATASETS["imagenet2012"]
    c = data_config(imagenet_dir, name="imagenet2012", augment="inception_crop_flip",
                    image_size=32)
    threads = take(train_batches(spec, c, 8, 0, 0, 0, 1), 4)
    c.num_workers = 2
    workers = take(train_batches(spec, c, 8, 0, 0, 0, 1), 4)
    for x, y in zip(threads, workers):
        np.testing.assert_array_equal(x["image"], y["image"])
