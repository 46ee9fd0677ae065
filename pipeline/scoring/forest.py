"""Scoring a fitted scikit-learn IsolationForest in one vectorised pass over all its trees.

scikit-learn scores tree by tree (``tree.apply`` per tree, a Python loop over 150 trees), which costs
about 10 ms per call whatever the number of rows; the streaming engine scores small batches often, so
that fixed cost would dominate. :class:`CompiledForest` lays every tree's nodes side by side in flat
arrays and walks all trees for all rows level by level with numpy — the same comparisons on the same
float32-cast inputs, the same per-leaf path lengths, the same normalisation — so its scores equal
``-IsolationForest.score_samples`` (to float rounding; the tests check 1e-12). The forest itself is
trained, owned and persisted by scikit-learn/skops; this only evaluates it.

Where ``scripts/build-accel`` compiled ``_forest_walk.pyx``, each row walks each tree in C instead
(several times faster; same arrays, same comparisons, same order of summation — tests compare both).
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length

try:
    from pipeline.scoring._forest_walk import path_lengths as compiled_path_lengths
except ImportError:  # not built here (or JWTWATCH_PURE_PYTHON): the numpy walk below
    compiled_path_lengths = None


class CompiledForest:
    def __init__(self, forest: IsolationForest) -> None:
        self.n_features = int(forest.n_features_in_)
        subsample = forest._max_features != self.n_features
        lefts, rights, features, thresholds, leaf_values, roots = [], [], [], [], [], []
        offset = 0
        depth = 0
        for tree, used, path_lengths, average_lengths in zip(
            forest.estimators_,
            forest.estimators_features_,
            forest._decision_path_lengths,
            forest._average_path_length_per_tree,
            strict=True,
        ):
            t = tree.tree_
            count = t.node_count
            index = np.arange(count)
            leaf = t.children_left == -1
            left = np.where(leaf, index, t.children_left) + offset  # leaves loop onto themselves
            right = np.where(leaf, index, t.children_right) + offset
            feature = np.where(leaf, 0, t.feature)
            if subsample:
                feature = np.where(leaf, 0, np.asarray(used)[feature])
            lefts.append(left)
            rights.append(right)
            features.append(feature)
            thresholds.append(np.where(leaf, np.inf, t.threshold))
            leaf_values.append(path_lengths + average_lengths - 1.0)
            roots.append(offset)
            offset += count
            depth = max(depth, int(t.max_depth))
        # children[2 * node] is the left child, children[2 * node + 1] the right one.
        self.children = np.stack([np.concatenate(lefts), np.concatenate(rights)], axis=1).ravel().astype(np.intp)
        self.feature = np.concatenate(features).astype(np.intp)
        self.threshold = np.concatenate(thresholds).astype(np.float64)
        self.leaf_value = np.concatenate(leaf_values).astype(np.float64)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.depth = depth
        self.source: IsolationForest | None = None
        self.denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])

    def anomaly(self, X: np.ndarray, *, compiled: bool = True) -> np.ndarray:
        """The anomaly score in (0, 1]: equal to ``-forest.score_samples(X)``.

        ``compiled=False`` takes the numpy walk even where the compiled one is built (for tests)."""
        # Trees compare float32 inputs (sklearn's DTYPE) against float64 thresholds.
        X = np.asarray(X, dtype=np.float64).astype(np.float32).astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        if compiled and compiled_path_lengths is not None:
            depths = np.empty(X.shape[0])
            nodes = (self.children, self.feature, self.threshold, self.leaf_value, self.roots)
            compiled_path_lengths(np.ascontiguousarray(X), *nodes, depths)
        else:
            depths = self._walk(X)
        if self.denominator == 0:
            return np.full(X.shape[0], 0.5)  # trees of one sample: scikit-learn's 2 ** -1
        return 2.0 ** (-depths / self.denominator)

    def _walk(self, X: np.ndarray) -> np.ndarray:
        flat = X.ravel()
        # One path per (tree, row), advanced a level at a time for all trees and rows together.
        offsets = (np.arange(X.shape[0], dtype=np.intp) * self.n_features)[None, :]
        node = np.repeat(self.roots[:, None], X.shape[0], axis=1)
        for _ in range(self.depth):
            value = flat.take(offsets + self.feature.take(node))
            node = self.children.take(2 * node + (value > self.threshold.take(node)))
        return self.leaf_value.take(node).sum(axis=0)
