"""Per-process input pipelines over TFDS array_record datasets.

The order of training examples is a pure function of (seed, step):

    global batch s = examples at positions [s*B, (s+1)*B) of the endless
    stream  epoch 0 permutation | epoch 1 permutation | ...  (each epoch a
    fresh permutation from (seed, epoch)), augmented with random draws made
    from (seed, s) for the whole global batch.

Process p of P reads, decodes and augments only rows [p*B/P, (p+1)*B/P) of
each global batch. The global batch, and so the training run, is the same
for any number of processes or devices, and the iterator's position is one
integer, the step: resuming, or moving a job to another pod size, means
building the pipeline with `start_step`.

grain provides the parallel machinery: a lazily indexed `MapDataset`, read
ahead by a thread pool (`ReadOptions`) and optionally by worker processes
(`mp_prefetch`, for JPEG decoding at ImageNet scale). Its own shuffle is not
used: it draws each index separately, which costs more than a permutation
per epoch, and its per-element random streams would tie augmentation to the
position within a process's shard.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from nme_train.data import augment
from nme_train.data.datasets import DatasetSpec, find_dataset_dir
from nme_train.data.decode import as_array, decode_window, jpeg_decoder

Batch = dict[str, np.ndarray]


class _InMemory:
    """A decoded split held as numpy arrays, indexable by an array of keys."""

    def __init__(self, source: Any):
        n = len(source)
        first = source[0]
        self.images = np.empty((n, *first["image"].shape), np.uint8)
        self.labels = np.empty((n,), np.int32)
        for start in range(0, n, 1024):
            keys = list(range(start, min(n, start + 1024)))
            for k, record in zip(keys, source.__getitems__(keys)):
                self.images[k] = record["image"]
                self.labels[k] = record["label"]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, keys: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        return list(self.images[keys]), self.labels[keys]


class _OnDisk:
    """A TFDS array_record data source, read record by record.

    JPEG datasets are read as bytes (the transform decodes them: `_JpegTransform`);
    otherwise TFDS decodes the images.
    """

    def __init__(self, source: Any):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def take(self, keys: np.ndarray) -> tuple[list[Any], np.ndarray]:
        records = self._source.__getitems__([int(k) for k in keys])
        return [r["image"] for r in records], np.asarray([r["label"] for r in records], np.int32)


def _open_split(spec: DatasetSpec, split: str, data_config: Any):
    builder = tfds.builder_from_directory(find_dataset_dir(spec, data_config.data_dir))
    _check_split(builder, spec, split)
    if data_config.cache and spec.cacheable:
        return _InMemory(builder.as_data_source(split=split))
    if spec.jpeg:
        return _OnDisk(builder.as_data_source(split=split,
                                              decoders={"image": tfds.decode.SkipDecoding()}))
    return _OnDisk(builder.as_data_source(split=split))


def _check_split(builder, spec: DatasetSpec, split: str) -> None:
    """Raises ValueError unless `split` names a split or a TFDS slice of one ("train[:10%]")."""
    try:
        builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(
            f"split {split!r} not in {spec.tfds_name} (has {sorted(builder.info.splits)}; "
            "slices such as 'train[:10000]' work too): fix config.data.train_split / "
            f"config.data.eval_split ({str(e).splitlines()[0]})"
        ) from None


def split_size(spec: DatasetSpec, split: str, data_dir: str) -> int:
    """Number of examples in `split` (a split or a slice of one), from the dataset's metadata."""
    builder = tfds.builder_from_directory(find_dataset_dir(spec, data_dir))
    _check_split(builder, spec, split)
    return builder.info.splits[split].num_examples


class ProcessBatches(grain.MapDataset):
    """Element s: this process's rows of global batch s, as uint8 images and int32 labels.

    Training (`shuffle_seed` set): positions run over an endless stream of
    per-epoch permutations, and the global batch is augmented with draws
    from (seed, s). Evaluation (`shuffle_seed` None): one pass in the stored
    order; the last global batch is completed with blank images whose `mask`
    is 0, so every example counts exactly once.
    """

    def __init__(
        self,
        records: Any,
        global_batch: int,
        process_index: int,
        process_count: int,
        shuffle_seed: int | None = None,
        transform: Callable[[np.ndarray, dict, int], np.ndarray] | None = None,
        augmentation: str = "none",
        noisy_labels: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ):
        super().__init__([])
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} not divisible by "
                             f"{process_count} processes")
        self._records = records
        self._global = global_batch
        self._local = global_batch // process_count
        self._offset = process_index * self._local
        self._seed = shuffle_seed
        self._transform = transform
        self._augmentation = augmentation
        self._noisy_labels = noisy_labels
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        n = len(records)
        if shuffle_seed is None:
            self._length = math.ceil(n / global_batch)
        else:
            if n < global_batch:
                raise ValueError(f"the split has {n} examples, fewer than one global batch "
                                 f"of {global_batch}; lower config.batch_size")
            self._length = np.iinfo(np.int64).max // global_batch

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict:  # worker processes get a copy without the lock
        state = self.__dict__.copy()
        state.pop("_lock")
        state["_permutations"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch `epoch`; the newest few are cached (reader threads share them)."""
        with self._lock:
            if epoch not in self._permutations:
                if len(self._permutations) >= 3:
                    self._permutations.pop(min(self._permutations))
                rng = np.random.default_rng([self._seed, epoch])
                self._permutations[epoch] = rng.permutation(len(self._records))
            return self._permutations[epoch]

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        n = len(self._records)
        positions = step * self._global + self._offset + np.arange(self._local)
        if self._seed is None:
            valid = positions < n
            keys = np.where(valid, positions, 0)
        else:
            valid = np.ones(self._local, bool)
            epochs, within = np.divmod(positions, n)
            keys = np.empty_like(positions)
            for epoch in np.unique(epochs):
                keys[epochs == epoch] = self._permutation(int(epoch))[within[epochs == epoch]]
        images, labels = self._records.take(keys)
        if self._noisy_labels is not None:
            labels = self._noisy_labels(keys, labels)
        if self._transform is not None:
            params = {}
            if self._seed is not None:
                rng = np.random.default_rng([self._seed, 1 << 32, step])
                params = augment.draw(self._augmentation, rng, self._global)
            images = [self._transform(im, params, self._offset + i)
                      for i, im in enumerate(images)]
        batch = {"image": np.stack(images), "label": labels}
        if self._seed is None:
            batch["image"][~valid] = 0
            batch["label"] = np.where(valid, labels, 0).astype(np.int32)
            batch["mask"] = valid.astype(np.float32)
        return batch


def label_noise(fraction: float, seed: int, num_examples: int, num_classes: int
                ) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """(keys, labels) -> labels with a fixed `fraction` of the split's examples relabelled.

    Example k of the split is corrupted when it is among round(fraction * n)
    examples drawn from `seed` alone (not the training seed: every run of a
    study sees the same corrupted set); it then gets one of the other
    classes, also fixed per example. The symmetric label noise of the
    sharpness literature (SAM's robustness to noisy labels); None when
    `fraction` is 0.
    """
    if fraction <= 0:
        return None
    rng = np.random.default_rng([seed, 0x4E4F4953])  # its own stream: "NOIS"
    corrupted = np.zeros(num_examples, bool)
    corrupted[rng.permutation(num_examples)[:round(fraction * num_examples)]] = True
    shift = rng.integers(1, num_classes, num_examples)  # to another class: 1..C-1 further

    def relabel(keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
        noisy = (labels + shift[keys]) % num_classes
        return np.where(corrupted[keys], noisy, labels).astype(np.int32)

    return relabel


def _transform(spec: DatasetSpec, name: str, image_size: int, data_config: Any):
    """(image, params, row) -> image: decoding (JPEG datasets), geometry fix-up, then
    augmentation `name`."""
    if spec.jpeg:
        return _JpegTransform(jpeg_decoder(data_config.decoder), name, image_size,
                              data_config.crop_decode)
    crop = name == "inception_crop_flip"
    if spec.variable_size and not crop:
        def fit(im):
            return augment.resize_center_crop(im, image_size)
    elif image_size != spec.image_size and not crop:
        def fit(im):
            return augment.resize(im, (image_size, image_size))
    else:
        fit = None
    if fit is None and name == "none":
        return None

    def apply(image: np.ndarray, params: dict, row: int) -> np.ndarray:
        if fit is not None:
            image = fit(image)
        return augment.augment_image(name, image, params, row, image_size) if params else image

    return apply


class _JpegTransform:
    """JPEG bytes -> the augmented image_size x image_size crop (a class, so that grain's
    worker processes can unpickle it).

    The crop window (the Inception crop of the row's draws in training, the
    evaluation's centre crop otherwise) is chosen from the header's size and
    decoded by `decode_window`, at the smallest DCT scale that covers it,
    which also flips unless a pad-crop comes first; `crop_decode=False`
    decodes in full first and crops the array, the older path, kept for
    comparison (the same windows and flips either way). Pad-crop acts on
    the result.
    """

    def __init__(self, decoder, name: str, image_size: int, crop_decode: bool):
        self.decoder, self.name, self.size, self.crop_decode = (decoder, name, image_size,
                                                                crop_decode)

    def __call__(self, data: bytes, params: dict, row: int) -> np.ndarray:
        inception = "area" in params
        rest = {k: v for k, v in params.items() if k in ("offset", "flip")}
        if self.crop_decode:
            height, width = self.decoder.size(data)
            if inception:
                window = augment.inception_window(height, width, params["area"][row],
                                                  params["log_aspect"][row],
                                                  params["corner"][row])
            else:
                window = augment.center_window(height, width, self.size)
            flip = "flip" in rest and "offset" not in rest and bool(rest.pop("flip")[row])
            image = decode_window(self.decoder, data, window, self.size, (height, width), flip)
        else:
            image = as_array(self.decoder.decode(data))
            if inception:
                image = augment.inception_crop(image, self.size, params["area"][row],
                                               params["log_aspect"][row],
                                               params["corner"][row])
            else:
                image = augment.resize_center_crop(image, self.size)
        return augment.augment_image(self.name, image, rest, row, self.size) if rest else image


def train_batches(
    spec: DatasetSpec,
    data_config: Any,
    global_batch: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
) -> Iterator[Batch]:
    """Endless iterator of this process's training batches, from global step `start_step`."""
    c = data_config
    image_size = c.image_size or spec.image_size
    augment.draw(c.augment, np.random.default_rng(0), 1)  # validates the name early
    records = _open_split(spec, c.train_split or spec.train_split, c)
    ds = ProcessBatches(records, global_batch, process_index, process_count, shuffle_seed=seed,
                        transform=_transform(spec, c.augment, image_size, c),
                        augmentation=c.augment,
                        noisy_labels=label_noise(c.get("label_noise", 0.0),
                                                 c.get("label_noise_seed", 0), len(records),
                                                 spec.num_classes))
    it = ds.slice(slice(start_step, None)).to_iter_dataset(
        grain.ReadOptions(num_threads=c.num_threads, prefetch_buffer_size=c.prefetch)
    )
    if c.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside main
            flags.FLAGS.mark_as_parsed()  # (tests, notebooks) their defaults are used
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.num_workers))
    return iter(it)


class ReadAhead:
    """Iterates `iterator` in a thread of its own, up to `depth` items ahead of the reader.

    `ready()` is how many items are waiting: sampled when a step asks for its batch, it
    says whether the input keeps up (the trainer's `time/input_queue_depth`). `close()`
    stops the thread. An exception of the iterator is raised to the reader."""

    _END = object()

    def __init__(self, iterator: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True,
                                        name="read-ahead")
        self._thread.start()

    def _fill(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except Exception as e:  # noqa: BLE001 - handed to the reader, raised there
            self._queue.put(e)

    def ready(self) -> int:
        return self._queue.qsize()

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def eval_batches(
    spec: DatasetSpec,
    data_config: Any,
    global_batch: int,
    process_index: int,
    process_count: int,
) -> ProcessBatches:
    """This process's padded evaluation batches (each with a `mask`), in a fixed order."""
    c = data_config
    image_size = c.image_size or spec.image_size
    records = _open_split(spec, c.eval_split or spec.eval_split, c)
    return ProcessBatches(records, global_batch, process_index, process_count,
                          transform=_transform(spec, "none", image_size, c))
