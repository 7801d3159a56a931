"""Reference crystal structures built from published crystallographic data (no files needed)."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

# Olivine LiFePO4, Pnma (No. 62), lattice in Å and Wyckoff positions from neutron diffraction
# (Streltsov et al., Acta Cryst. B 1993); 28 atoms in the conventional cell.
_OLIVINE_LATTICE = (10.332, 6.010, 4.692)
_OLIVINE_SITES = {
    "Li": (0.0, 0.0, 0.0),
    "Fe": (0.2822, 0.25, 0.9747),
    "P": (0.0950, 0.25, 0.4182),
    "O1": (0.0968, 0.25, 0.7428),
    "O2": (0.4573, 0.25, 0.2060),
    "O3": (0.1656, 0.0464, 0.2848),
}


def lifepo4(supercell: tuple[int, int, int] = (1, 1, 1), transition_metal: str = "Fe") -> Structure:
    """Olivine LiMPO4 (M = ``transition_metal``), 28 atoms per cell, times ``supercell``.

    ``lifepo4((1, 1, 2))`` is the 56-atom cell used in speed and equivalence figures.
    """
    species = ["Li", transition_metal, "P", "O", "O", "O"]
    structure = Structure.from_spacegroup(
        "Pnma", Lattice.orthorhombic(*_OLIVINE_LATTICE), species, list(_OLIVINE_SITES.values())
    )
    if len(structure) != 28:
        raise RuntimeError(f"olivine construction gave {len(structure)} atoms, expected 28")
    return structure * supercell
