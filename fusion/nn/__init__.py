"""Networks and perceptual losses: GP-GAN's Blending GAN, the VGG16 feature extractor and the losses of Deep
Image Blending, FusionVAE with its CVAE/FCN baselines, their cells and output distributions."""

from fusion.nn.baselines import CVAE, FCN
from fusion.nn.cells import SpectralRegulariser, spectral_regularisation
from fusion.nn.distributions import Bernoulli, DiscretizedLogisticMixture, Normal, likelihood, likelihood_channels
from fusion.nn.fusionvae import FusionOutput, FusionVAE, aggregate, bayesian_aggregate
from fusion.nn.gpgan import BlendingCritic, BlendingGenerator
from fusion.nn.losses import (
    ContentLoss,
    HistogramLoss,
    PoissonGradientLoss,
    StyleLoss,
    TVLoss,
    gram_matrix,
    match_histograms,
    sorted_features,
)
from fusion.nn.vgg import VGG16_LAYERS, VGG16Features, default_vgg16_path, load_vgg16_state_dict

__all__ = [
    "CVAE",
    "FCN",
    "Bernoulli",
    "DiscretizedLogisticMixture",
    "FusionOutput",
    "FusionVAE",
    "Normal",
    "SpectralRegulariser",
    "aggregate",
    "bayesian_aggregate",
    "likelihood",
    "likelihood_channels",
    "spectral_regularisation",
    "BlendingCritic",
    "BlendingGenerator",
    "ContentLoss",
    "HistogramLoss",
    "PoissonGradientLoss",
    "StyleLoss",
    "TVLoss",
    "VGG16Features",
    "VGG16_LAYERS",
    "default_vgg16_path",
    "gram_matrix",
    "load_vgg16_state_dict",
    "match_histograms",
    "sorted_features",
]
