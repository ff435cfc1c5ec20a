"""The data engine: raw records -> conversations -> template text -> token ids and labels -> batches."""

from xtune.data.dataset import TrainingData, build_training_data, encode_records, tokenized_dataset

__all__ = ["TrainingData", "build_training_data", "encode_records", "tokenized_dataset"]
