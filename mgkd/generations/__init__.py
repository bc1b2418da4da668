"""One generation (teacher signal, training, selection, checkpoint) and the schedule of generations."""

from mgkd.generations.spec import GenerationSpec, build_schedule
from mgkd.generations.training import GenerationResult, train_generation

__all__ = ["GenerationResult", "GenerationSpec", "build_schedule", "train_generation"]
