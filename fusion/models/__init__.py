"""LightningModules (losses, schedules, logging) and the training callbacks they share."""

from fusion.models.callbacks import ImageGridLogger, image_grid
from fusion.models.fusionvae import FusionModule

__all__ = ["FusionModule", "ImageGridLogger", "image_grid"]
