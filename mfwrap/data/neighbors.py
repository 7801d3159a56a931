"""Periodic neighbour list in torch: vectorised, O(N), any cell shape, any pbc.

Algorithm (cell list over "ghost" images):
1. Wrap positions into the cell along periodic directions (``r = r_w + k @ L``, k integer).
2. Along a periodic direction with reciprocal vector b_k (a column of L^-1), images up to
   ``n_k = ceil(cutoff * |b_k|)`` cells away can hold a neighbour (``1/|b_k|`` is the spacing of
   lattice planes), so thin and tiny cells get as many images as they need.
3. Keep ghost images whose fractional coordinate lies within ``cutoff * |b_k|`` of [0, 1): any
   atom within ``cutoff`` of a point in the cell does.
4. Bin ghosts in Cartesian cubes of edge ``cutoff``; each centre looks at its 27 surrounding
   bins. Bins are kept sparse (sorted ids + searchsorted), so a dilute molecule costs nothing.

Work is in float64 whatever the input dtype; shifts returned are integer-valued.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

_NEIGHBOUR_BIN_OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)))


def _fractional_basis(cell: Tensor, pbc: Tensor) -> Tensor:
    """Return a non-singular basis equal to ``cell`` on periodic rows.

    A non-periodic row may be zero (a molecule or a slab without a vacuum vector); it is
    replaced by a unit vector normal to the other rows, which never shifts or wraps anything.
    """
    basis = cell.clone()
    for k in range(3):
        if not bool(pbc[k]) and float(basis[k].norm()) < 1e-8:
            a, b = basis[(k + 1) % 3], basis[(k + 2) % 3]
            normal = torch.linalg.cross(a, b)
            if float(normal.norm()) < 1e-8:  # two or more zero rows: fall back to axes
                normal = torch.eye(3, dtype=cell.dtype, device=cell.device)[k]
                for other in ((k + 1) % 3, (k + 2) % 3):
                    if float(basis[other].norm()) < 1e-8 and not bool(pbc[other]):
                        basis[other] = torch.eye(3, dtype=cell.dtype, device=cell.device)[other]
            basis[k] = normal / normal.norm()
    return basis


def periodic_radius_graph(
    positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float
) -> tuple[Tensor, Tensor, Tensor]:
    """All directed pairs (i, j, S) with ``|r_j + S @ cell - r_i| < cutoff``, excluding i == j at S = 0.

    Args:
        positions: (n, 3) Cartesian positions, Å.
        cell: (3, 3) lattice vectors as rows, Å (rows of non-periodic directions may be zero).
        pbc: (3,) bool periodicity.
        cutoff: radius, Å.

    Returns:
        edge_index (2, E) long, row 0 = neighbour j, row 1 = centre i, sorted by (i, j);
        shifts (E, 3) integer-valued, in ``positions.dtype``; distances (E,) in ``positions.dtype``.
    """
    device, out_dtype = positions.device, positions.dtype
    pos = positions.detach().to(torch.float64)
    pbc = pbc.to(device=device, dtype=torch.bool).reshape(3)
    n_atoms = pos.shape[0]

    if bool(pbc.any()):
        basis = _fractional_basis(cell.detach().to(device=device, dtype=torch.float64).reshape(3, 3), pbc)
        inverse = torch.linalg.inv(basis)
        frac = pos @ inverse
        wrap = torch.where(pbc, torch.floor(frac), torch.zeros_like(frac))
        frac_wrapped = frac - wrap
        pos_wrapped = frac_wrapped @ basis
        reach = cutoff * inverse.norm(dim=0)  # cutoff in fractional units, per direction
        n_images = torch.where(pbc, torch.ceil(reach), torch.zeros_like(reach)).long().tolist()
        ranges = [torch.arange(-m, m + 1, device=device, dtype=torch.float64) for m in n_images]
        image_shifts = torch.cartesian_prod(*ranges).reshape(-1, 3)
        ghost_frac = frac_wrapped.unsqueeze(0) + image_shifts.unsqueeze(1)  # (S, n, 3)
        inside = ((ghost_frac >= -reach) & (ghost_frac < 1.0 + reach)) | ~pbc
        keep_shift, keep_atom = inside.all(dim=-1).nonzero(as_tuple=True)
        ghost_shift = image_shifts[keep_shift]
        ghost_atom = keep_atom
        ghost_pos = pos_wrapped[ghost_atom] + ghost_shift @ basis
    else:
        wrap = torch.zeros_like(pos)
        pos_wrapped = pos
        ghost_atom = torch.arange(n_atoms, device=device)
        ghost_shift = torch.zeros_like(pos)
        ghost_pos = pos

    # Sparse cubic bins of edge `cutoff`.
    origin = ghost_pos.min(dim=0).values
    ghost_bin = torch.floor((ghost_pos - origin) / cutoff).long()
    n_bins = ghost_bin.max(dim=0).values + 3  # +margin so offsets of -1/+1 never alias
    ghost_bin = ghost_bin + 1
    strides = torch.stack([n_bins[1] * n_bins[2], n_bins[2], torch.ones_like(n_bins[2])])
    ghost_bin_id = (ghost_bin * strides).sum(-1)
    ghost_bin_id, order = torch.sort(ghost_bin_id)
    bin_ids, bin_counts = torch.unique_consecutive(ghost_bin_id, return_counts=True)
    bin_starts = torch.cumsum(bin_counts, 0) - bin_counts

    centre_bin = torch.floor((pos_wrapped - origin) / cutoff).long() + 1
    offsets = _NEIGHBOUR_BIN_OFFSETS.to(device)
    probe_id = ((centre_bin.unsqueeze(1) + offsets) * strides).sum(-1).reshape(-1)  # (n*27,)
    slot = torch.searchsorted(bin_ids, probe_id).clamp(max=bin_ids.numel() - 1)
    found = bin_ids[slot] == probe_id
    counts = torch.where(found, bin_counts[slot], torch.zeros_like(slot))
    starts = bin_starts[slot]

    probe_centre = torch.arange(n_atoms, device=device).repeat_interleave(27)
    centre = probe_centre.repeat_interleave(counts)
    first_of_probe = torch.cumsum(counts, 0) - counts
    within = torch.arange(centre.numel(), device=device) - first_of_probe.repeat_interleave(counts)
    ghost = order[starts.repeat_interleave(counts) + within]

    vectors = ghost_pos[ghost] - pos_wrapped[centre]
    dist = vectors.norm(dim=-1)
    neighbour = ghost_atom[ghost]
    shift_wrapped = ghost_shift[ghost]
    is_self = (neighbour == centre) & (shift_wrapped == 0).all(-1)
    keep = (dist < cutoff) & ~is_self
    centre, neighbour, dist = centre[keep], neighbour[keep], dist[keep]
    # Shift for the unwrapped positions: r_j + S L - r_i with r = r_w + k L.
    shifts = shift_wrapped[keep] - wrap[neighbour] + wrap[centre]

    sort_key = centre * n_atoms + neighbour
    sort_key, perm = torch.sort(sort_key, stable=True)
    edge_index = torch.stack([neighbour[perm], centre[perm]])
    return edge_index, shifts[perm].to(out_dtype), dist[perm].to(out_dtype)
