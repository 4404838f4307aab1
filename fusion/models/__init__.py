"""LightningModules (losses, schedules, logging) and the training callbacks they share."""

from fusion.models.callbacks import ImageGridLogger, image_grid

__all__ = ["ImageGridLogger", "image_grid"]
