"""The data engine: raw records -> conversations -> template text -> token ids and labels -> batches."""

from xtune.data.dataset import TrainingData, build_training_data, iter_encoded

__all__ = ["TrainingData", "build_training_data", "iter_encoded"]
