"""Module surgery: find where the four fidelity mechanisms go in a backbone, and put them there.

A :class:`FidelitySpec` names the places by module path (the names of ``named_modules()``).
It comes from the caller, from the backbone's own ``fidelity_spec`` attribute, or from
:func:`propose_spec`'s heuristics (which warn, saying what they chose). Which kind of rows
(atoms, edges, undirected bonds, angles, structures) each place produces is found by one probe
forward on a small batch whose row counts of all kinds differ: forward hooks record the number
of output rows of every place, and each count names exactly one kind. A place that is not
called, is called with rows of several kinds, or whose rows match no kind is an error unless the
caller names its kind (``row_kinds``). At run time every inserted module checks that its row
count equals that of its kind in the batch, so a kind that varies between batches is an error
too, not a silent misassignment. Rows are assumed to be in the batch's order of their kind
(structure by structure), as they are in every backbone that indexes with the batch's tensors.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from typing import Any, Mapping

import torch
from torch import nn
from torch_geometric.data import Batch

from mfwrap.backbone import check_outputs
from mfwrap.data import keys as K
from mfwrap.data.graph import MAX_ATOMIC_NUMBER, GraphSpec
from mfwrap.fidelity import ATOM, ROW_KINDS, STRUCTURE, FidelityContext, row_counts
from mfwrap.mechanisms import FidelityComposition, FidelityEmbedding, FidelityLinear
from mfwrap.mechanisms.composition import read_element_energies
from mfwrap.mechanisms.readout import READOUTS
from mfwrap.probe import layer_outputs, probe_batch
from mfwrap.symmetry import declares_non_scalars, rotating_places, scalar_columns

MECHANISMS = "ECMR"


def parse_mechanisms(mechanisms: str) -> str:
    """Canonical mechanism string (letters in the order E, C, M, R); other letters are an error."""
    if not isinstance(mechanisms, str):
        raise TypeError(f"mechanisms must be a string of letters from 'ECMR', got {mechanisms!r}")
    letters = mechanisms.upper()
    unknown = sorted(set(letters) - set(MECHANISMS))
    if unknown or len(set(letters)) != len(letters):
        raise ValueError(
            f"mechanisms {mechanisms!r}: use each of E (embedding), C (composition), M (message "
            f"linear layers), R (readout) at most once" + (f"; unknown letters {unknown}" if unknown else "")
        )
    return "".join(m for m in MECHANISMS if m in letters)


@dataclass(frozen=True)
class FidelitySpec:
    """Where the mechanisms go in a backbone, and what its parts are, by module path.

    Attributes:
        embedding: the atomic-number embedding; E adds X_f to its output.
        message: fnmatch patterns ('*' also spans dots) of the linear layers of the message
            functions; M adds W_F onehot(f) to their output. A matching module is taken if it
            is an ``nn.Linear`` or its class name is in ``linear_types``; nested matches count once
            (the outermost).
        readout: patterns of the readout networks (row-wise, e.g. per-atom energy MLPs); R
            copies each per fidelity. Nested matches count once (the outermost).
        composition: the composition-energy module, which C replaces and which the composition
            fit of every training method fills; None: C adds its energy to the backbone's total.
        heads: patterns of other output heads (e.g. CHGNet's magmom head) shared by all
            fidelities. With ``readout`` and ``composition`` they are what transfer learning
            fine-tunes; everything else (embeddings, message passing) is the pre-trained body.
        linear_types: {class name: path of its bias parameter or None}: modules that
            ``message`` treats as linear layers (affine modules such as CHGNet's factorised first
            layer of a gated MLP). With a bias path (``nn.Linear``: "bias"), a batch of one
            fidelity f folds W_F[:, f] into that bias instead of adding it to every output row.
    """

    embedding: str | None = None
    message: tuple[str, ...] = ()
    readout: tuple[str, ...] = ()
    composition: str | None = None
    heads: tuple[str, ...] = ()
    linear_types: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: "FidelitySpec | Mapping[str, Any]") -> "FidelitySpec":
        """A spec from a spec or a dict with (a subset of) its fields."""
        if isinstance(value, FidelitySpec):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a backbone spec must be a FidelitySpec or a dict, got {type(value).__name__}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown backbone spec field(s) {unknown}; known are {sorted(cls.__dataclass_fields__)}")
        fields = {key: tuple(value[key]) for key in ("message", "readout", "heads") if key in value}
        types = value.get("linear_types", {})
        fields["linear_types"] = dict(types) if isinstance(types, Mapping) else dict.fromkeys(types)
        return cls(**{**dict(value), **fields})

    def as_dict(self) -> dict[str, Any]:
        return {
            key: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v
            for key, v in asdict(self).items()
        }


_MESSAGE_NAME = re.compile(r"interaction|conv|message|layers|blocks", re.IGNORECASE)
_READOUT_NAME = re.compile(r"readout|output|head|energy|final", re.IGNORECASE)
_OTHER_HEAD_NAME = re.compile(r"site|magmom|charge|dipole|force|stress", re.IGNORECASE)  # heads of other targets


def propose_spec(backbone: nn.Module) -> FidelitySpec:
    """Heuristic spec for a backbone that declares none (what it could not decide:
    :func:`undecided_places`).

    embedding: the ``nn.Embedding`` with ≥ 84 entries and width > 1 (of several, the one the
    forward calls on atoms); composition: the one ``nn.Embedding(·, 1)`` or module with
    ``element_energies``; message: every ``nn.Linear`` in ``nn.ModuleList``s whose name says
    interaction/conv/message/layers/blocks; readout: direct children named
    readout/output/head/energy/final (each block of such a list), else the outermost such modules at
    any depth outside the message stacks; names of other targets' heads (site, magmom, charge,
    dipole, force, stress) are never readouts.
    """
    return _propose(backbone)[0]


def undecided_places(backbone: nn.Module) -> list[str]:
    """What :func:`propose_spec` could not decide for ``backbone``, one sentence each."""
    return _propose(backbone)[1]


def _atom_embeddings(backbone: nn.Module, paths: list[str]) -> list[str]:
    """Those of ``paths`` that the forward calls with one row per atom (a probe forward)."""
    batch, calls = probe_shapes(backbone, paths)
    atoms = row_counts(batch)[ATOM]
    return [p for p in paths if calls[p] and all(shape and shape[0] == atoms for shape in calls[p])]


def _propose(backbone: nn.Module) -> tuple[FidelitySpec, list[str]]:
    modules = dict(backbone.named_modules())
    undecided = []
    embeddings = [
        p for p, m in modules.items() if isinstance(m, nn.Embedding) and m.num_embeddings >= 84 and m.embedding_dim > 1
    ]
    if len(embeddings) > 1 and isinstance(getattr(backbone, "graph_spec", None), GraphSpec):
        called = _atom_embeddings(backbone, embeddings)
        if len(called) == 1:
            embeddings = called
    if len(embeddings) != 1:
        undecided.append(
            f"embedding: {len(embeddings)} candidate element embeddings (nn.Embedding with >= 84 entries, "
            f"called on atoms){f' {embeddings}' if embeddings else ''}; none chosen"
        )
    compositions = [
        p
        for p, m in modules.items()
        if (isinstance(m, nn.Embedding) and m.embedding_dim == 1)
        or isinstance(getattr(m, "element_energies", None), torch.Tensor)
    ]
    if len(compositions) > 1:
        undecided.append(
            f"composition: {len(compositions)} per-element energy tables {compositions}; none chosen "
            "(C then adds its own)"
        )
    stacks = [
        p
        for p, m in modules.items()
        if isinstance(m, nn.ModuleList) and _MESSAGE_NAME.search(p.rsplit(".", 1)[-1]) and not _READOUT_NAME.search(p)
    ]
    if not stacks:
        undecided.append(
            "message: no nn.ModuleList named interaction/conv/message/layers/blocks holds the message functions"
        )

    def is_readout(path: str) -> bool:
        name = path.rsplit(".", 1)[-1]
        return (
            bool(_READOUT_NAME.search(name))
            and not _OTHER_HEAD_NAME.search(name)
            and path not in stacks
            and next(modules[path].parameters(), None) is not None
        )  # not a dropout or an activation

    heads = [name for name, _ in backbone.named_children() if is_readout(name)]
    if not heads:  # e.g. a wrapped network's final layer, one level down
        heads = _outermost(
            [p for p in modules if p and is_readout(p) and not any(p.startswith(q + ".") for q in stacks)]
        )
    if not heads:
        undecided.append(
            "readout: no module named readout/output/head/energy/final (other than heads of other "
            "targets such as site-wise magmoms)"
        )
    spec = FidelitySpec(
        embedding=embeddings[0] if len(embeddings) == 1 else None,
        message=tuple(f"{p}.*" for p in stacks),
        readout=tuple(f"{h}.*" if isinstance(modules[h], nn.ModuleList) else h for h in heads),
        composition=compositions[0] if len(compositions) == 1 else None,
    )
    return spec, undecided


def resolve_spec(backbone: nn.Module, spec: "FidelitySpec | Mapping[str, Any] | None") -> tuple[FidelitySpec, str]:
    """(spec, where it came from: "given", "backbone" or "heuristic")."""
    if spec is not None:
        return FidelitySpec.from_value(spec), "given"
    declared = getattr(backbone, "fidelity_spec", None)
    if declared is not None:
        return FidelitySpec.from_value(declared), "backbone"
    proposal, undecided = _propose(backbone)
    warnings.warn(
        f"{type(backbone).__name__} declares no fidelity_spec; heuristics chose {proposal.as_dict()}"
        + (f"; could not decide: {'; '.join(undecided)}" if undecided else "")
        + " (pass spec= to MultiFidelity to change or pin it)",
        stacklevel=3,
    )
    return proposal, "heuristic"


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(p.startswith(q + ".") for q in paths)]


def find_places(backbone: nn.Module, spec: FidelitySpec, mechanisms: str) -> dict[str, list[str]]:
    """Module paths per mechanism letter; a requested mechanism without a place is an error."""
    modules = dict(backbone.named_modules())
    name = type(backbone).__name__

    def matching(patterns: tuple[str, ...], accept) -> list[str]:
        return _outermost(
            [p for p, m in modules.items() if p and accept(m) and any(fnmatch(p, pat) for pat in patterns)]
        )

    def single(path: str | None, what: str) -> list[str]:
        if path is None:
            return []
        if path not in modules:
            raise ValueError(f"spec names {what} module '{path}', but {name} has no such module")
        return [path]

    places = {
        "E": single(spec.embedding, "embedding"),
        "C": single(spec.composition, "composition"),
        "M": matching(spec.message, lambda m: isinstance(m, nn.Linear) or type(m).__name__ in spec.linear_types),
        "R": matching(spec.readout, lambda m: True),
    }
    chosen = [p for letter in mechanisms for p in places[letter]]
    nested = [(p, q) for p in chosen for q in chosen if q.startswith(p + ".")] + [
        (p, p) for p in set(chosen) if chosen.count(p) > 1
    ]
    if nested:
        raise ValueError(f"places of different mechanisms are nested in {name}: {nested[:3]}; fix the spec")
    what = {
        "E": "an atomic-number embedding (spec.embedding)",
        "M": "message linear layers (spec.message)",
        "R": "a readout (spec.readout)",
    }
    for letter in mechanisms:
        if letter != "C" and not places[letter]:
            raise ValueError(
                f"mechanism {letter} has no place in {name}: its spec names no {what[letter]}; spec = {spec.as_dict()}"
            )
    return {letter: places[letter] for letter in mechanisms}


def probe_shapes(backbone: nn.Module, paths: list[str]) -> tuple[Batch, dict[str, list[tuple[int, ...]]]]:
    """The probe batch (:func:`mfwrap.probe.probe_batch`) and the output shape of every call of each
    module in ``paths`` during ``backbone``'s forward on it (() for an output that is not a tensor);
    the forward's outputs are checked against the backbone contract."""
    batch = probe_batch(backbone)
    out, outputs = layer_outputs(backbone, paths, batch)
    check_outputs(backbone, out, int(batch[K.CELL].shape[0]))
    return batch, {path: [() if o is None else tuple(o.shape) for o in outs] for path, outs in outputs.items()}


def row_kinds_from_probe(
    calls: Mapping[str, list[tuple[int, ...]]],
    counts: Mapping[str, int],
    overrides: Mapping[str, str],
    backbone_name: str,
) -> dict[str, str]:
    """Row kind of each probed path (see module docstring); ``overrides``: pattern → kind.

    Paths that were not called (and have no override) are left out: the forward does not use them.
    """
    by_count = {count: kind for kind, count in counts.items()}
    if len(by_count) != len(counts):
        raise RuntimeError(f"probe batch row counts are not distinct: {counts}")
    kinds: dict[str, str] = {}
    for path, shapes in calls.items():
        forced = [kind for pattern, kind in overrides.items() if fnmatch(path, pattern)]
        if forced:
            kinds[path] = forced[0]
            continue
        if not shapes:
            continue  # not called by the forward: the caller leaves it unchanged
        hint = f"; name its kind with row_kinds={{'{path}': one of {list(ROW_KINDS)}}}"
        found = {by_count.get(shape[0] if shape else -1) for shape in shapes}
        if None in found:
            raise ValueError(
                f"{backbone_name}.{path} produced outputs of shapes {sorted(set(shapes))}, whose row counts "
                f"match no row kind of the probe batch {dict(counts)}{hint}"
            )
        if len(found) > 1:
            raise ValueError(f"{backbone_name}.{path} is called with rows of different kinds {sorted(found)}{hint}")
        kinds[path] = found.pop()
    return kinds


@dataclass
class SurgeryReport:
    """What the surgery did: one (mechanism, module path, module type, row kind) per place, the
    places the spec matched that the backbone's forward never calls (left unchanged), the places
    heuristics matched whose outputs rotate with the structure (refused), the places whose term
    was restricted to their scalar (0e) columns, and the symmetry check."""

    spec: FidelitySpec
    spec_source: str
    places: list[tuple[str, str, str, str]]
    skipped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    symmetry: str = ""
    restricted: dict[str, tuple[int, int]] = field(default_factory=dict)  # place -> (scalar columns, all columns)

    def count(self, mechanism: str) -> int:
        return sum(1 for m, *_ in self.places if m == mechanism)

    def __str__(self) -> str:
        lines = [f"spec ({self.spec_source}): {self.spec.as_dict()}"]
        for letter in MECHANISMS:
            entries = [p for p in self.places if p[0] == letter]
            if entries:
                lines.append(f"{letter}: {len(entries)} place(s)")
                lines += [f"    {path} ({kind} rows, {type_name})" for _, path, type_name, kind in entries]
        if self.skipped:
            lines.append(f"not called by the forward, left unchanged: {self.skipped}")
        if self.restricted:
            lines.append(
                "outputs mix scalars and rotating components: fidelity term on the 0e columns only: "
                + ", ".join(f"{p} ({n} of {total})" for p, (n, total) in self.restricted.items())
            )
        if self.refused:
            lines.append(
                f"outputs rotate with the structure (or carry components), so no fidelity term was put there: "
                f"{self.refused}"
            )
        if self.symmetry:
            lines.append(self.symmetry)
        return "\n".join(lines)


def declared_restrictions(backbone: nn.Module, places: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """{E or M place whose declared ``irreps_out`` has non-scalar parts: its 0e columns} (no probe)."""
    modules = dict(backbone.named_modules())
    found = {
        p: scalar_columns(modules[p])
        for letter in "EM"
        for p in places.get(letter, [])
        if declares_non_scalars(modules[p])
    }
    return {p: columns for p, columns in found.items() if len(columns) > 0}


def _refuse_rotating(
    backbone: nn.Module, places: dict[str, list[str]], spec_source: str, calls: Mapping[str, list[tuple[int, ...]]]
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """E and M add a vector per row: a place whose outputs rotate with the structure (on the probe,
    or by its declared e3nn ``irreps_out``) takes the term on its declared scalar columns only (e3nn
    ``0e``, :func:`~mfwrap.symmetry.scalar_columns`), or is refused: an error for a given or declared
    spec, dropped (and reported) for heuristic choices. So is a place whose outputs have components
    between rows and channels (rows × 3 × 3 × channels, say): a term broadcast over them is not a
    tensor of the right kind even where the probe sees invariant values (e.g. an isotropic part).
    Returns (refused places, {restricted place: its scalar columns})."""
    candidates = [p for letter in "EM" for p in places.get(letter, [])]
    restricted = declared_restrictions(backbone, places)
    rotating = list(dict.fromkeys(list(restricted) + (rotating_places(backbone, candidates) if candidates else [])))
    components = [p for p in candidates if p not in rotating and any(len(shape) > 2 for shape in calls.get(p, []))]
    refused = [p for p in rotating if p not in restricted] + components
    if refused and spec_source != "heuristic":
        place = refused[0]
        why = (
            f"its outputs {sorted(set(calls[place]))} have components between rows and channels"
            if place in components
            else "its outputs rotate with the structure (vector or tensor features) and it declares no scalar (0e) "
            "output columns"
        )
        raise ValueError(
            f"{type(backbone).__name__}.{place}: {why}; a fidelity term there (mechanism E or M) would "
            f"break rotational symmetry. Name only layers with invariant (scalar) outputs, rows × channels, in the "
            f"spec's embedding / message (refused: {refused})"
        )
    for letter in "EM":
        if letter in places:
            places[letter] = [p for p in places[letter] if p not in refused]
            if not places[letter]:
                raise ValueError(
                    f"mechanism {letter} has no place with invariant outputs in {type(backbone).__name__}; "
                    f"refused as rotating: {refused}"
                )
    return refused, restricted


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def operate(
    backbone: nn.Module,
    mechanisms: str,
    context: FidelityContext,
    spec: FidelitySpec,
    spec_source: str,
    row_kinds: Mapping[str, str] | None = None,
    refuse_rotating: bool = True,
    readout: str = "copies",
) -> tuple[SurgeryReport, FidelityComposition | None]:
    """Insert the mechanisms into ``backbone`` in place (E and M only where outputs are invariant,
    unless ``refuse_rotating`` is False); R as independent copies (``readout`` "copies") or as a
    shared readout with per-fidelity residuals ("residual").

    Returns (what was done, a :class:`FidelityComposition` that the wrapper must add to the total
    energy, or None when C is off or replaced the backbone's composition module).
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {list(READOUTS)}, got {readout!r}")
    overrides = dict(row_kinds or {})
    bad = {k: v for k, v in overrides.items() if v not in ROW_KINDS}
    if bad:
        raise ValueError(f"row_kinds {bad}: kinds must be among {list(ROW_KINDS)}")
    places = find_places(backbone, spec, mechanisms)
    paths = [p for letter in places for p in places[letter]]
    unused = [pattern for pattern in overrides if not any(fnmatch(p, pattern) for p in paths)]
    if unused:
        raise ValueError(
            f"row_kinds pattern(s) {unused} match no place of mechanisms {mechanisms!r}; places are {paths}"
        )
    parameter = next(backbone.parameters())
    batch, calls = probe_shapes(backbone, paths)
    kinds = row_kinds_from_probe(calls, row_counts(batch), overrides, type(backbone).__name__)
    skipped = [p for p in paths if p not in kinds]
    places = {letter: [p for p in found if p in kinds] for letter, found in places.items()}
    for letter, found in places.items():
        if letter != "C" and not found:
            raise ValueError(
                f"mechanism {letter} has no place in {type(backbone).__name__}: "
                f"none of {skipped} is called by its forward"
            )
    # declared irreps restrict the terms even without the probe-based refusal (a file rebuilds the same widths)
    refused, restricted = (
        _refuse_rotating(backbone, places, spec_source, calls)
        if refuse_rotating
        else ([], declared_restrictions(backbone, places))
    )
    context.kinds = set(kinds.values()) | {ATOM, STRUCTURE}
    modules = dict(backbone.named_modules())
    report = SurgeryReport(
        spec,
        spec_source,
        [(letter, p, type(modules[p]).__name__, kinds[p]) for letter in places for p in places[letter]],
        skipped,
        refused=refused,
    )

    def width(path: str) -> int:
        module = modules[path]
        if isinstance(module, (nn.Linear, nn.Embedding)):
            return module.out_features if isinstance(module, nn.Linear) else module.embedding_dim
        shapes = calls[path]
        if not shapes or len(shapes[0]) < 2:
            raise ValueError(f"cannot tell the output width of {path} (output shapes {shapes})")
        return shapes[0][-1]

    report.restricted = {p: (len(columns), width(p)) for p, columns in restricted.items()}
    for path in places.get("M", []):
        module = modules[path]
        bias = (
            "bias"
            if isinstance(module, nn.Linear) and module.bias is not None
            else spec.linear_types.get(type(module).__name__)
        )
        _replace(
            backbone,
            path,
            FidelityLinear(
                module, context, kinds[path], width(path), name=path, bias_path=bias, channels=restricted.get(path)
            ),
        )
    for path in places.get("E", []):
        _replace(
            backbone,
            path,
            FidelityEmbedding(
                modules[path], context, kinds[path], width(path), name=path, channels=restricted.get(path)
            ),
        )
    for path in places.get("R", []):
        _replace(backbone, path, READOUTS[readout](modules[path], context, kinds[path], name=path))
    added = None
    if "C" in places:
        if places["C"]:
            path = places["C"][0]
            if kinds[path] not in (ATOM, STRUCTURE) or not calls[path]:
                raise ValueError(f"composition module {path} must return per-atom or per-structure energies")
            module = FidelityComposition(
                context,
                read_element_energies(modules[path]),
                kinds[path],
                calls[path][0][1:],
                parameter.dtype,
                name=path,
            )
            _replace(backbone, path, module.to(parameter.device))
        else:
            initial = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64)
            added = FidelityComposition(context, initial, STRUCTURE, (), parameter.dtype, name="composition").to(
                parameter.device
            )
    return report, added
