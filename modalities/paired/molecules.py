"""Molecule-description pairs generated from structure: the paired data source ``molecule_text``.

Each molecule of the graph tower's ``molecules`` source (:mod:`mmcl.modalities.graph.molecules`, e.g. RDKit's
bundled NCI set) is paired with a description **generated from its structure**, the way MolTextNet (arXiv:2506.00009)
builds its pairs at scale: the molecular formula, the heavy-atom count, the ring and aromatic-ring counts and the
functional groups RDKit's ``FragmentDescriptors.csv`` (RDDataDir) names, with their counts. So the texts are
templates over RDKit descriptors, not human-written: a retrieval score measures how well the graph tower learns what
the text tower reads of these descriptors.

Example:
    >>> from mmcl.modalities.paired.molecules import describe
    >>> text = describe("CC(=O)Oc1ccccc1C(=O)O")  # aspirin
    >>> text[:48]
    'C9H8O4, 13 heavy atoms, 1 ring, 1 aromatic ring.'
    >>> [group in text for group in ("carboxylic acid", "ester", "benzene ring", "carbonyl O (2)")]
    [True, True, True, True]

"""

from __future__ import annotations

import functools
from typing import Any

from mmcl.contract import ModalityAdapter
from mmcl.modalities.graph.molecules import read_molecules
from mmcl.modalities.paired.sources import PairSource, register_pairs

#: Fragment codes left out of the descriptions: counts of atoms or generic bonds rather than groups.
SKIPPED_FRAGMENTS = ("fr_C=O_noCOO", "fr_Al_OH_noTert", "fr_ArN", "fr_Ar_N", "fr_Ar_NH", "fr_NH0", "fr_NH1",
                     "fr_NH2", "fr_Ndealkylation1", "fr_Ndealkylation2", "fr_unbrch_alkane", "fr_bicyclic",
                     "fr_para_hydroxylation", "fr_allylic_oxid", "fr_aryl_methyl")  # fmt: skip


@functools.lru_cache(maxsize=1)
def fragment_patterns() -> tuple[tuple[str, Any], ...]:
    """``(name, pattern)`` of RDKit's FragmentDescriptors.csv: "Number of carboxylic acids" -> "carboxylic acid"."""
    from rdkit import Chem, RDConfig

    patterns = []
    with open(f"{RDConfig.RDDataDir}/FragmentDescriptors.csv") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#") or len(fields) < 3 or fields[0] in SKIPPED_FRAGMENTS:
                continue
            pattern = Chem.MolFromSmarts(fields[2])
            if pattern is not None:
                patterns.append((_group_name(fields[1]), pattern))
    return tuple(patterns)


def _group_name(description: str) -> str:
    """``"Number of esters"`` -> ``"ester"`` (RDKit's wording, singular)."""
    name = description.strip('"').removeprefix("Number of ").strip()
    for plural, singular in (("groups", "group"), ("rings", "ring"), ("acids", "acid"), ("ketones", "ketone")):
        name = name.replace(plural, singular)
    return name[:-1] if name.endswith("s") and not name.endswith(("ss", "us", "is")) else name


def describe(smiles: str) -> str:
    """The generated description of one molecule (module docstring)."""
    from rdkit import Chem
    from rdkit.Chem import rdMolDescriptors

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}")
    rings, aromatic = rdMolDescriptors.CalcNumRings(mol), rdMolDescriptors.CalcNumAromaticRings(mol)
    heavy = mol.GetNumHeavyAtoms()
    parts = [rdMolDescriptors.CalcMolFormula(mol), _count(heavy, "heavy atom"), _count(rings, "ring")]
    if rings:
        parts.append(_count(aromatic, "aromatic ring"))
    found: dict[str, int] = {}  # several patterns may share a name (RDKit's two carboxylic-acid patterns)
    for name, pattern in fragment_patterns():
        count = len(mol.GetSubstructMatches(pattern))
        if count:
            found[name] = max(found.get(name, 0), count)
    groups = [name if count == 1 else f"{name} ({count})" for name, count in found.items()]
    text = ", ".join(parts) + "."
    return text + (f" Functional groups: {', '.join(sorted(groups))}." if groups else " No listed functional group.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@functools.lru_cache(maxsize=4)
def descriptions(dataset: str, root: str | None, max_molecules: int | None) -> tuple[str, ...]:
    return tuple(describe(smiles) for smiles in read_molecules(dataset, root, max_molecules))


@register_pairs("molecule_text")
def molecule_text(a: ModalityAdapter, b: ModalityAdapter) -> PairSource:
    """Tower ``a``: the molecule graphs of a graph tower with ``data.towers.a.source=molecules``; tower ``b``: their
    generated descriptions (strings, for a text tower), matched by index."""
    data = getattr(a, "data_config", None)
    if a.name != "graph" or getattr(data, "source", None) != "molecules":
        raise ValueError(
            f"data.pairs=molecule_text needs tower a to be a graph tower reading molecules (model.towers.a.modality="
            f"graph, data.towers.a.source=molecules); got modality {a.name!r}"
            + (f" with data.source={data.source!r}" if data is not None and hasattr(data, "source") else "")
        )
    if b.name != "text":
        raise ValueError(f"data.pairs=molecule_text needs tower b to be a text tower (model.towers.b.modality=text); "
                         f"got {b.name!r}")  # fmt: skip
    max_molecules = data.dataset_options.get("max_molecules")
    texts = descriptions(data.dataset, data.root, max_molecules)
    graphs = a.source.graphs
    return PairSource(items_a=graphs, items_b=texts)
