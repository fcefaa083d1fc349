"""The datasets the trainer knows, by the name used in `config.data.name`."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable

from nme_train.data.prepare import prepare_digits
from nme_train.registry import Registry


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a TFDS dataset."""

    tfds_name: str
    train_split: str
    eval_split: str
    num_classes: int
    image_size: int  # side of the square image the model sees
    channels: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    variable_size: bool = False  # images of varying size (ImageNet): resized by the pipeline
    cacheable: bool = True  # small enough to decode once into memory
    jpeg: bool = False  # JPEG images, decoded by the pipeline with config.data.decoder
    prepare: Callable[[str], str] | None = None  # offline preparation, if any
    how_to_get: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset", "config.data.name")


def register_dataset(name: str, spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Adds a TFDS dataset the pipeline reads by `name` (config.data.name)."""
    return DATASETS.register(name, spec, replace=replace)


for _name, _spec in {
    "digits": DatasetSpec(
        "digits", "train", "test", 10, 8, 1, (0.3053,), (0.3759,), prepare=prepare_digits,
        how_to_get="prepared automatically from scikit-learn",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "train", "test", 10, 28, 1, (0.2860,), (0.3530,),
        how_to_get="`nme-prepare-data fashion_mnist --from "
        "/usr/share/datasets/fashion-mnist --data_dir DATA_DIR` (Debian package "
        "dataset-fashion-mnist) or `tfds build fashion_mnist --file_format=array_record`",
    ),
    "cifar10": DatasetSpec(
        "cifar10", "train", "test", 10, 32, 3,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        how_to_get="`tfds build cifar10 --file_format=array_record --data_dir DATA_DIR`",
    ),
    "cifar100": DatasetSpec(
        "cifar100", "train", "test", 100, 32, 3,
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        how_to_get="`tfds build cifar100 --file_format=array_record --data_dir DATA_DIR`",
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012", "train", "validation", 1000, 224, 3,
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), variable_size=True, cacheable=False,
        jpeg=True,
        how_to_get="place ILSVRC2012_img_{train,val}.tar in DATA_DIR/downloads/manual and run "
        "`tfds build imagenet2012 --file_format=array_record --data_dir DATA_DIR`",
    ),
}.items():
    register_dataset(_name, _spec)


def default_data_dir() -> str:
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _prepared_versions(root: str) -> list[tuple[int, ...]]:
    versions = []
    if os.path.isdir(root):
        for entry in os.listdir(root):
            if re.fullmatch(r"\d+\.\d+\.\d+", entry) and os.path.exists(
                os.path.join(root, entry, "dataset_info.json")
            ):
                versions.append(tuple(int(p) for p in entry.split(".")))
    return versions


def staging_dir(data_dir: str) -> str:
    """The local copy of the gs:// data directory `data_dir` on this machine:
    $NME_TRAIN_DATA_CACHE (default ~/.cache/nme_train/data)/<bucket>/<path>."""
    cache = os.environ.get("NME_TRAIN_DATA_CACHE",
                           os.path.expanduser("~/.cache/nme_train/data"))
    return os.path.join(cache, data_dir.split("://", 1)[1].strip("/"))


def _stage(spec: DatasetSpec, data_dir: str) -> str:
    """The newest version of `spec` under the gs:// `data_dir`, copied to this machine's
    staging directory once (the record readers open local files only); its local path.

    The copy goes to a temporary directory renamed into place when complete, under the
    same exclusive lock as a preparation, so the processes of one host copy it once and
    an interrupted copy is never used. A copy already in place is reused when its
    dataset_info.json equals the bucket's."""
    from nme_train import storage

    root = storage.join(data_dir, spec.tfds_name)
    versions = sorted((tuple(int(p) for p in name.split(".")), name)
                      for name in storage.listdir(root) if re.fullmatch(r"\d+\.\d+\.\d+", name)
                      and storage.exists(storage.join(root, name, "dataset_info.json")))
    if not versions:
        raise FileNotFoundError(
            f"dataset {spec.tfds_name!r} is not prepared under data_dir={data_dir!r} (no "
            f"{root}/<version>/dataset_info.json). Prepare it on a disk (e.g. `{spec.how_to_get}`"
            f") and copy it there (`gcloud storage cp -r DATA_DIR/{spec.tfds_name} {data_dir}/`)")
    version = versions[-1][1]
    source = storage.join(root, version)
    local_root = os.path.join(staging_dir(data_dir), spec.tfds_name)
    target = os.path.join(local_root, version)
    info = storage.read_text(storage.join(source, "dataset_info.json"))

    def current() -> bool:
        try:
            with open(os.path.join(target, "dataset_info.json"), encoding="utf-8") as f:
                return f.read() == info
        except FileNotFoundError:
            return False

    if current():
        return target
    with _exclusive(os.path.join(staging_dir(data_dir), f".{spec.tfds_name}.stage.lock"),
                    f"another process to copy {spec.tfds_name!r} from {data_dir}"):
        if current():
            return target
        import shutil

        partial = f"{target}.partial{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        print(f"data: copying {source} to {target} (once per machine)", flush=True)
        storage.copy_to_local(source, partial)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    return target


class _exclusive:
    """An exclusive lock on a local lock file (flock), waited for at most `timeout` s."""

    def __init__(self, path: str, what: str, timeout: float = 600.0):
        self.path, self.what, self.timeout = path, what, timeout

    def __enter__(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "w")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.file.close()
                    raise TimeoutError(f"waited {self.timeout:.0f} s for {self.what}") from None
                time.sleep(0.2)

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _prepare_once(spec: DatasetSpec, data_dir: str, root: str, timeout: float = 600.0) -> str:
    """Prepares an offline dataset once, also when several processes ask at the same time.

    An exclusive lock file in `data_dir` serialises the preparation: the first
    process writes the dataset, the others wait for the lock and then find it
    prepared (the processes of one machine, or of several sharing a file system
    with working locks).
    """
    with _exclusive(os.path.join(data_dir, f".{spec.tfds_name}.prepare.lock"),
                    f"another process to prepare {spec.tfds_name!r} in {data_dir}", timeout):
        versions = _prepared_versions(root)
        if versions:
            return os.path.join(root, ".".join(map(str, max(versions))))
        return spec.prepare(data_dir)


def find_dataset_dir(spec: DatasetSpec, data_dir: str) -> str:
    """The newest prepared version directory of `spec` under `data_dir`.

    Prepares the dataset first when it can be prepared offline. Raises
    FileNotFoundError naming the command that builds it otherwise. A gs:// `data_dir`
    is read through a local copy made once per machine (`_stage`).
    """
    if "://" in data_dir:
        return _stage(spec, data_dir)
    root = os.path.join(data_dir, spec.tfds_name)
    versions = _prepared_versions(root)
    if not versions:
        if spec.prepare is not None:
            return _prepare_once(spec, data_dir, root)
        raise FileNotFoundError(
            f"dataset {spec.tfds_name!r} is not prepared under data_dir={data_dir!r} "
            f"(no {root}/<version>/dataset_info.json). Get it with: {spec.how_to_get}; "
            "or set config.data.data_dir (or $TFDS_DATA_DIR) to where it is."
        )
    return os.path.join(root, ".".join(map(str, max(versions))))
