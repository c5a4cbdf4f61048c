"""Molecule graphs from SMILES with RDKit atom and bond features: the graph data source ``molecules``.

``data.source=molecules``: ``data.dataset`` is ``nci_first_5k`` (the 4999 NCI molecules that RDKit ships,
``rdkit/Data/NCI/first_5K.smi`` under ``rdkit.RDConfig.RDDataDir``; no download) or a ``.smi`` file (one SMILES per
line, optionally followed by a name) under ``data.root``. ``data.dataset_options``: ``max_molecules`` (the first N
that RDKit parses). Molecules RDKit cannot parse, and those without heavy atoms, are skipped, the same way for every
user of :func:`read_molecules` (the paired ``molecule_text`` data), so indices agree.

Node features ``x`` (``(atoms, 35)``, float, one-hot blocks; :data:`ATOM_FEATURES`): the element (:data:`ELEMENTS`,
others in one column), the heavy-atom degree (0-5, more clipped), the formal charge (-1, 0, +1, others clipped),
the total hydrogen count (0-4), aromaticity and ring membership. Edge features ``edge_attr`` (``(2 x bonds, 6)``;
both directions): the bond type (single, double, triple, aromatic), conjugation and ring membership, as the
OGB/MoleculeNet featurisers do. The built-in GIN/GCN/GraphSAGE encoders read ``x`` only (``data.node_features=x``);
``data.edge_attributes=true`` keeps ``edge_attr`` for an encoder of your own that reads it.

Needs RDKit (``pip install "mmcl[molecules]"``).

Example:
    >>> from mmcl.modalities.graph.molecules import molecule_graph
    >>> graph = molecule_graph("CC(=O)Oc1ccccc1C(=O)O")  # aspirin: 13 heavy atoms, 13 bonds
    >>> tuple(graph.x.shape), tuple(graph.edge_index.shape), tuple(graph.edge_attr.shape)
    ((13, 35), (2, 26), (26, 6))
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from mmcl.modalities.graph.datasets import register_source

ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si", "Se", "Sn", "As", "Hg", "Na", "K", "Pt")
DEGREES, CHARGES, HYDROGENS = 6, (-1, 0, 1), 5
#: The node feature blocks and their widths (35 columns in all).
ATOM_FEATURES = {"element": len(ELEMENTS) + 1, "degree": DEGREES, "formal_charge": len(CHARGES),
                 "hydrogens": HYDROGENS, "aromatic": 1, "in_ring": 1}  # fmt: skip
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
#: The bundled molecule sets, by ``data.dataset`` name: a path under RDKit's data folder.
BUNDLED = {"nci_first_5k": ("NCI", "first_5K.smi")}


def _rdkit() -> Any:
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('the molecules data need RDKit: pip install "mmcl[molecules]" (or rdkit)') from error
    RDLogger.DisableLog("rdApp.*")  # parse warnings of the NCI file are expected; skipped molecules are counted
    return Chem


def smiles_file(dataset: str, root: str | None) -> Path:
    """The SMILES file of ``dataset``: a bundled set (:data:`BUNDLED`) or ``root/dataset`` (``.smi`` added)."""
    if dataset in BUNDLED:
        _rdkit()
        from rdkit import RDConfig

        return Path(RDConfig.RDDataDir, *BUNDLED[dataset])
    if root is None:
        raise ValueError(
            f"data.dataset={dataset!r} is not a bundled molecule set ({sorted(BUNDLED)}) and data.root is not set; "
            "set data.root to the folder of the .smi file or use data.dataset=nci_first_5k"
        )
    path = Path(root).expanduser() / dataset
    path = path if path.suffix else path.with_suffix(".smi")
    if not path.is_file():
        raise FileNotFoundError(f"data.dataset={dataset!r}: no SMILES file {path}; set data.root or data.dataset")
    return path


@functools.lru_cache(maxsize=4)
def read_molecules(dataset: str, root: str | None = None, max_molecules: int | None = None) -> tuple[str, ...]:
    """The canonical SMILES of the molecules of ``dataset`` that RDKit parses (at most ``max_molecules``), in file
    order; the graph source and the paired data both index these."""
    Chem = _rdkit()
    kept = []
    for line in smiles_file(dataset, root).read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        mol = Chem.MolFromSmiles(fields[0])
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        kept.append(Chem.MolToSmiles(mol))
        if max_molecules is not None and len(kept) >= max_molecules:
            break
    if not kept:
        raise ValueError(f"data.dataset={dataset!r}: RDKit parsed no molecule in {smiles_file(dataset, root)}")
    return tuple(kept)


def _one_hot(index: int, width: int) -> list[float]:
    row = [0.0] * width
    row[min(max(index, 0), width - 1)] = 1.0
    return row


def atom_features(atom: Any) -> list[float]:
    """One atom's feature row (module docstring; :data:`ATOM_FEATURES`)."""
    symbol = atom.GetSymbol()
    element = ELEMENTS.index(symbol) if symbol in ELEMENTS else len(ELEMENTS)
    charge = max(-1, min(1, atom.GetFormalCharge())) + 1  # -1, 0, +1; larger charges clipped
    return [
        *_one_hot(element, len(ELEMENTS) + 1),
        *_one_hot(atom.GetDegree(), DEGREES),
        *_one_hot(charge, len(CHARGES)),
        *_one_hot(atom.GetTotalNumHs(), HYDROGENS),
        float(atom.GetIsAromatic()),
        float(atom.IsInRing()),
    ]


def bond_features(bond: Any) -> list[float]:
    kind = str(bond.GetBondType())
    return [*(float(kind == name) for name in BOND_TYPES), float(bond.GetIsConjugated()), float(bond.IsInRing())]


def molecule_graph(smiles: str) -> Data:
    """``Data(x (atoms, 35), edge_index (2, 2 x bonds), edge_attr (2 x bonds, 6))`` of one molecule's heavy atoms."""
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}")
    x = torch.tensor([atom_features(atom) for atom in mol.GetAtoms()], dtype=torch.float32)
    pairs, attrs = [], []
    for bond in mol.GetBonds():
        i, j, features = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_features(bond)
        pairs += [(i, j), (j, i)]
        attrs += [features, features]
    edge_index = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)
    edge_attr = torch.tensor(attrs, dtype=torch.float32).reshape(-1, 2 + len(BOND_TYPES))
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr)


@register_source("molecules")
def molecules(
    dataset: str, root: str | None, cache_dir: str | None, download: bool, max_molecules: int | None = None
) -> list[Data]:
    """The molecule graphs of ``dataset`` (module docstring); no class labels (unsupervised or paired training)."""
    return [molecule_graph(smiles) for smiles in read_molecules(dataset, root, max_molecules)]
