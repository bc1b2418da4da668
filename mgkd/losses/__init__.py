"""Distillation loss plugins. Importing this package registers the built-in ones."""

from mgkd.losses import internal, label_smoothing, pseudo_label, sequence, soft_label  # noqa: F401  (registration)
from mgkd.losses.base import Criterion, LossPlugin, TeacherNeeds, create, register, registry

__all__ = ["Criterion", "LossPlugin", "TeacherNeeds", "create", "register", "registry"]
