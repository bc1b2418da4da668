"""One generation (teacher signal, training, selection, checkpoint) and the schedule of generations."""

from mgkd.generations.loop import GenerationResult
from mgkd.generations.recipe import train_generation
from mgkd.generations.spec import GenerationSpec, build_schedule

__all__ = ["GenerationResult", "GenerationSpec", "build_schedule", "train_generation"]
