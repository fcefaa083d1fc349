"""Datasets (TFDS array_record), offline preparation, and per-process pipelines."""

from nme_train.data.datasets import DATASETS, DatasetSpec, default_data_dir, find_dataset_dir
from nme_train.data.pipeline import eval_batches, split_size, train_batches

__all__ = ["DATASETS", "DatasetSpec", "default_data_dir", "find_dataset_dir",
           "eval_batches", "split_size", "train_batches"]
