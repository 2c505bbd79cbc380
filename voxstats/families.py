"""Exchangeability blocks from a family table: twins and siblings within families.

Human Connectome Project users build PALM's ``-eb`` matrix from the restricted
table (subject, mother, father, zygosity) with ``hcp2blocks``
(github.com/andersonwinkler/HCP); :func:`blocks_from_families` does the same
from any such table. The matrix goes to ``exchangeability_blocks`` (or to a
CSV for PALM), and :mod:`voxstats.exchangeability` turns it into a tree.

References
----------
Winkler AM, Webster MA, Vidaurre D, Nichols TE, Smith SM (2015). Multi-level
block permutation. NeuroImage 123:253-268. doi:10.1016/j.neuroimage.2015.05.092
"""

import numpy as np

__all__ = ["blocks_from_families"]

_TWIN = {"mz": "MZ", "dz": "DZ", "notmz": "DZ", "nottwin": "NT", "not twin": "NT", "nt": "NT", "": "NT"}


def blocks_from_families(subject, mother, father, zygosity, *, dz_as_siblings=False):
    """PALM ``-eb`` matrix of a family table (twins within families), as HCP's ``hcp2blocks`` builds.

    Families are the subjects connected by a shared mother or father. Inside a
    family, siblings of one kind (monozygotic twins, dizygotic twins, or
    non-twins) with the same two parents form a sibship whose members are
    exchangeable with each other; different sibships of a family stay in
    place. Families with the same composition are exchangeable as whole blocks.
    A twin whose co-twin is not in the table counts as a non-twin.

    Parameters
    ----------
    subject, mother, father : (n_subjects,) array-like
        Subject and parent identifiers (any hashable values).
    zygosity : (n_subjects,) array-like of str
        'MZ', 'DZ' (or HCP's 'NotMZ') or 'NotTwin' (case-insensitive).
    dz_as_siblings : bool
        Let dizygotic twins be exchanged with their non-twin full siblings
        (hcp2blocks' third argument).

    Returns
    -------
    (n_subjects, 5) ndarray of int64
        Columns: root (-1), family type (+: families of one type are
        exchangeable as wholes), family (+ when the family is one sibship,
        - otherwise), sibship (+: members exchangeable), subject (leaf),
        rows in the input order.

    Notes
    -----
    hcp2blocks (github.com/andersonwinkler/HCP) codes family types by
    ``sum of 10 (non-twin), 100 (DZ), 1000 (MZ) + number of parents`` and
    splits some half-sibling families by hand; here a sibship is defined by its
    two parents and its twin status, which splits half-siblings the same way in
    general, and a family type is the sorted list of its sibships' (kind, size).
    hcp2blocks also deletes constant columns, which changes the tree's meaning
    when, say, every family has the same type (the families would then stay in
    place); here every column is kept. On a 15-subject table of twins,
    siblings and singletons both give the same tree counts (768 permutations,
    256 sign flips) and variance groups under PALM.
    """
    subject, mother, father = (np.asarray(x, dtype=object) for x in (subject, mother, father))
    n = subject.shape[0]
    if not (mother.shape[0] == father.shape[0] == len(zygosity) == n):
        raise ValueError("blocks_from_families: subject, mother, father and zygosity must have the same length")
    if len(set(subject.tolist())) != n:
        raise ValueError("blocks_from_families: subject identifiers must be unique")
    kind = []
    for i, z in enumerate(zygosity):
        key = str(z).strip().lower()
        if key not in _TWIN:
            raise ValueError(f"blocks_from_families: zygosity of subject {subject[i]!r} is {z!r}; "
                             "expected MZ, DZ, NotMZ or NotTwin")
        kind.append("NT" if dz_as_siblings and _TWIN[key] == "DZ" else _TWIN[key])
    # families: connected components of the subject-parent graph (union-find on parents)
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for m, f in zip(mother, father):
        parent[find(("p", m))] = find(("p", f))
    family = [find(("p", m)) for m in mother]
    sibship = [(family[i], mother[i], father[i], kind[i]) for i in range(n)]
    # a twin without a co-twin in the table is a non-twin
    sizes = {}
    for key in sibship:
        sizes[key] = sizes.get(key, 0) + 1
    for i in range(n):
        if kind[i] != "NT" and sizes[sibship[i]] == 1:
            kind[i] = "NT"
            sibship[i] = (family[i], mother[i], father[i], "NT")
    members = {}
    for i, key in enumerate(sibship):
        members.setdefault(key, []).append(i)
    families = {}
    for key, idx in members.items():
        families.setdefault(key[0], []).append((key[3], len(idx), str(key[1]), str(key[2]), idx))
    composition = {}
    out = np.zeros((n, 5), dtype=np.int64)
    out[:, 0] = -1
    out[:, 4] = np.arange(1, n + 1)
    order = {"MZ": 0, "DZ": 1, "NT": 2}
    for number, (_, sibs) in enumerate(sorted(families.items(), key=lambda kv: min(min(s[4]) for s in kv[1])),
                                       start=1):
        sibs.sort(key=lambda s: (order[s[0]], s[1], s[2], s[3]))
        signature = tuple((s[0], s[1]) for s in sibs)
        ftype = composition.setdefault(signature, len(composition) + 1)
        for j, (_, _, _, _, idx) in enumerate(sibs, start=1):
            out[idx, 1] = ftype
            out[idx, 2] = number if len(sibs) == 1 else -number
            out[idx, 3] = j
    return out
