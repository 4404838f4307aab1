"""Energies as plain functions of tensors, returning one value per batch sample."""

from fusion.energies.poisson import gaussian_poisson_energy, poisson_energy, region_edges

__all__ = ["gaussian_poisson_energy", "poisson_energy", "region_edges"]
