"""Energies as plain functions of tensors, returning one value per batch sample."""

from fusion.energies.osmosis import (
    fidelity_energy,
    huber_tv,
    osmosis_energy,
    osmosis_fusion_term,
    prox_fidelity,
    u_block_hessian,
    variational_osmosis_energy,
)
from fusion.energies.poisson import gaussian_poisson_energy, poisson_energy, region_edges
from fusion.energies.transport import kinetic_energy, prox_kinetic, transport_cost

__all__ = [
    "fidelity_energy",
    "huber_tv",
    "osmosis_energy",
    "osmosis_fusion_term",
    "prox_fidelity",
    "u_block_hessian",
    "variational_osmosis_energy",
    "gaussian_poisson_energy",
    "kinetic_energy",
    "poisson_energy",
    "prox_kinetic",
    "region_edges",
    "transport_cost",
]
