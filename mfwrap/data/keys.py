"""Key names of the one graph-data type, defined once.

Every reader, backbone, wrapper and loss speaks a PyG ``Data`` (one structure) or ``Batch``
(several) carrying these attributes. Shapes are for one structure with ``n`` atoms, ``E``
directed edges, ``U`` undirected edges and ``A`` angles; in a batch, per-structure tensors are
stacked along dim 0 and index tensors are offset by PyG's ``__inc__`` rules (see graph.py).

Geometry (Å):
    POSITIONS       (n, 3) float   Cartesian positions.
    ATOMIC_NUMBERS  (n,)   long    Z, 1..94.
    CELL            (1, 3, 3)      lattice vectors as rows.
    PBC             (1, 3) bool    periodicity per lattice direction.

Atom graph (directed, both directions present):
    EDGE_INDEX      (2, E) long    row 0 = neighbour j (source), row 1 = centre i (target);
                                   the edge vector is ``r_j + shift @ cell - r_i``.
    EDGE_SHIFT      (E, 3) float   integer cell offsets of the neighbour's image.

Line graph (only for backbones that ask for one, e.g. CHGNet's bond graph):
    EDGE_TO_UNDIRECTED (E,) long   undirected edge of each directed edge; (i,j,S) and (j,i,-S)
                                   share one.
    UNDIRECTED_TO_EDGE (U,) long   one directed representative of each undirected edge.
    ANGLE_EDGES     (2, A) long    ordered pairs (e1, e2), e1 != e2, of directed edges with the
                                   same centre, both shorter than the line-graph cutoff.

Per structure:
    FIDELITY        (1,) long      fidelity index (names live in the model / dataset).

Targets (eV, eV/Å, GPa, μB) and their masks (True = label present):
    ENERGY (1,) total eV;  FORCES (n, 3);  STRESS (1, 3, 3);  MAGMOMS (n,).
    ENERGY_MASK (1,), FORCES_MASK (n,), STRESS_MASK (1,), MAGMOMS_MASK (n,)  bool.
"""

POSITIONS = "pos"
ATOMIC_NUMBERS = "atomic_numbers"
CELL = "cell"
PBC = "pbc"

EDGE_INDEX = "edge_index"
EDGE_SHIFT = "edge_shift"

EDGE_TO_UNDIRECTED = "edge_to_undirected"
UNDIRECTED_TO_EDGE = "undirected_to_edge"
NUM_UNDIRECTED = "num_undirected"
ANGLE_EDGES = "angle_edges"

FIDELITY = "fidelity"

ENERGY = "energy"
FORCES = "forces"
STRESS = "stress"
MAGMOMS = "magmoms"
TARGETS = (ENERGY, FORCES, STRESS, MAGMOMS)
PER_ATOM_TARGETS = (FORCES, MAGMOMS)


def mask_key(target: str) -> str:
    """Name of the label mask that belongs to ``target`` (e.g. ``forces_mask``)."""
    return f"{target}_mask"
