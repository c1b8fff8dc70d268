"""Leak-free splits: near-duplicate grouping and stratified group splits (numpy only).

LC25000-style sets hold flipped / rotated copies of one source image; a random split puts copies on
both sides and inflates accuracy. Copies are found as connected components of a cosine-similarity
graph over flip/rotation-averaged CNN embeddings, and whole groups go to one split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similarity_groups(embeddings: np.ndarray, threshold: float, mutual_k: int = 0, block: int = 2048) -> np.ndarray:
    """Connected components of cosine similarity ≥ threshold; returns a component id per row.

    With ``mutual_k`` an edge also needs each image among the other's k nearest neighbours, which
    stops chains of merely similar tissue from merging into one giant group.
    """
    x = _unit_rows(embeddings)
    n = len(x)
    uf = _UnionFind(n)
    knn = None
    if mutual_k:
        knn = np.zeros((n, min(mutual_k, n - 1)), np.int64)
        for start in range(0, n, block):
            sims = x[start:start + block] @ x.T
            sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
            knn[start:start + block] = np.argsort(-sims, axis=1)[:, :knn.shape[1]]
        neighbours = [set(row.tolist()) for row in knn]
    for start in range(0, n, block):
        sims = x[start:start + block] @ x.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows + start, cols, strict=True):
            if r < c and (knn is None or (c in neighbours[r] and r in neighbours[c])):
                uf.union(int(r), int(c))
    roots = np.array([uf.find(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def cross_split_near_copies(embeddings: np.ndarray, split: np.ndarray, threshold: float = 0.95) -> float:
    """Fraction of test images whose most similar training image has similarity ≥ threshold (a leak gauge)."""
    x = _unit_rows(embeddings)
    test, train = x[split == 2], x[split == 0]
    if not len(test) or not len(train):
        return 0.0
    return float(((test @ train.T).max(1) >= threshold).mean())


def nearest_neighbour_similarity(embeddings: np.ndarray) -> np.ndarray:
    x = _unit_rows(embeddings)
    sims = x @ x.T
    np.fill_diagonal(sims, -1.0)
    return sims.max(axis=1)


def group_split(labels: Sequence[int], groups: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                seed: int = 0) -> np.ndarray:
    """Assign whole groups to splits so each split gets about ``fractions`` of every class.

    Greedy: groups in random order (largest first), each to the split whose per-class deficit it
    fills best. Returns the split index (0 train, 1 val, 2 test) of every sample.
    """
    labels = np.asarray(labels)
    groups = np.asarray([str(g) for g in groups])
    fractions = np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    classes = np.unique(labels)
    uniq, inverse = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(uniq), len(classes)))
    np.add.at(counts, (inverse, np.searchsorted(classes, labels)), 1)
    total = counts.sum(0)
    target = fractions[:, None] * total[None, :]
    have = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    assign = np.zeros(len(uniq), dtype=np.int64)
    for g in order:
        c = counts[g]
        deficit = (target - have) / np.maximum(total, 1)[None, :]
        score = (deficit * c[None, :]).sum(1) / max(c.sum(), 1)
        score = score + 1e-9 * rng.random(len(fractions))
        s = int(np.argmax(score))
        assign[g] = s
        have[s] += c
    return assign[inverse]


def random_split(labels: Sequence[int], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """The leaky per-image stratified split, kept only to show how much grouping matters."""
    labels = np.asarray(labels)
    return group_split(labels, [f"img{i}" for i in range(len(labels))], fractions, seed)


def groups_straddling(split: Sequence[int], groups: Sequence[str]) -> list[str]:
    """Groups that appear in more than one split (must be empty)."""
    seen: dict[str, set[str]] = {}
    for s, g in zip(split, groups, strict=True):
        seen.setdefault(str(g), set()).add(str(s))
    return [g for g, s in seen.items() if len(s) > 1]
