"""Scoring a fitted scikit-learn IsolationForest in one vectorised pass over all its trees.

scikit-learn scores tree by tree (``tree.apply`` per tree, a Python loop over 150 trees), which costs
about 10 ms per call whatever the number of rows; the streaming engine scores small batches often, so
that fixed cost would dominate. :class:`CompiledForest` lays every tree's nodes side by side in flat
arrays and walks all trees for all rows level by level with numpy — the same comparisons on the same
float32-cast inputs, the same per-leaf path lengths, the same normalisation — so its scores equal
``-IsolationForest.score_samples`` (to float rounding; the tests check 1e-12). The forest itself is
trained, owned and persisted by scikit-learn/skops; this only evaluates it.

Laying the trees out reads private attributes of the fitted forest (``_decision_path_lengths``,
``_average_path_length_per_tree``, ``_max_features``, ``_max_samples``) and the private
``sklearn.ensemble._iforest._average_path_length``. They are read only under the scikit-learn versions
:data:`SUPPORTED_SKLEARN` names (the same range ``pyproject.toml`` allows; the tests check both agree):
:func:`forest_evaluator` gives the compiled forest there, and elsewhere — with a warning — a
:class:`PublicForest` that calls scikit-learn's public ``score_samples`` (same scores, slower).

Where the build compiled ``_forest_walk.pyx`` (see ``pipeline/_accel.py``), the trees are walked in C
instead (several times faster; same nodes, comparisons deciding the same way, same order of summation —
tests compare both).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

from pipeline import _accel

compiled_path_lengths: Callable[..., None] | None  # _forest_walk.pyi has its signature
try:
    _accel.require_current_build()
    from pipeline.scoring._forest_walk import path_lengths as compiled_path_lengths
except ImportError:  # not built here, built from other sources, or JWTWATCH_PURE_PYTHON: the numpy walk below
    compiled_path_lengths = None

#: The scikit-learn versions whose private IsolationForest internals :class:`CompiledForest` reads:
#: (lowest supported minor, first minor not yet tested). pyproject.toml pins ``scikit-learn`` to this range.
SUPPORTED_SKLEARN: tuple[tuple[int, int], tuple[int, int]] = ((1, 4), (1, 10))


class ForestEvaluator(Protocol):
    def anomaly(self, X: np.ndarray) -> np.ndarray: ...


def minor_version(version: str) -> tuple[int, int]:
    """``"1.9.1"`` -> ``(1, 9)``; ``"1.10.dev0"`` -> ``(1, 10)``."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not a version: {version!r}")
    return int(found.group(1)), int(found.group(2))


def internals_supported(version: str = sklearn.__version__) -> bool:
    """Whether :class:`CompiledForest` may read this scikit-learn version's private forest internals."""
    lowest, first_untested = SUPPORTED_SKLEARN
    return lowest <= minor_version(version) < first_untested


def forest_evaluator(forest: IsolationForest, version: str = sklearn.__version__) -> ForestEvaluator:
    """The fast :class:`CompiledForest` under a supported scikit-learn, else scikit-learn's public path."""
    lowest, first_untested = SUPPORTED_SKLEARN
    supported = f">={lowest[0]}.{lowest[1]},<{first_untested[0]}.{first_untested[1]}"
    if not internals_supported(version):
        problem = f"scikit-learn {version} is outside the versions whose IsolationForest internals jwtwatch reads"
    else:
        try:
            return CompiledForest(forest)
        except (AttributeError, ImportError) as error:  # an in-range release that still moved them
            problem = f"scikit-learn {version} lacks an IsolationForest internal jwtwatch reads ({error})"
    warnings.warn(
        f"{problem} ({supported}): scoring with its public score_samples instead (same scores, slower)",
        RuntimeWarning,
        stacklevel=2,
    )
    return PublicForest(forest)


class PublicForest:
    """The anomaly score through scikit-learn's public API only: ``-forest.score_samples(X)``."""

    def __init__(self, forest: IsolationForest) -> None:
        self.forest = forest
        self.n_features = int(forest.n_features_in_)

    def anomaly(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        scores: np.ndarray = -self.forest.score_samples(X)
        return scores


class CompiledForest:
    """The forest's trees as flat arrays (and packed nodes for the compiled walk); reads private internals, so
    build it through :func:`forest_evaluator`, which checks the scikit-learn version first."""

    def __init__(self, forest: IsolationForest) -> None:
        from sklearn.ensemble._iforest import _average_path_length

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
        self.nodes = _packed_nodes(self.children, self.feature, self.threshold)
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
            rows = np.ascontiguousarray(X, dtype=np.float32)  # exact: X holds float32 values
            compiled_path_lengths(rows, self.nodes, self.leaf_value, self.roots, depths)
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
        lengths: np.ndarray = self.leaf_value.take(node).sum(axis=0)
        return lengths


#: One node as the compiled walk reads it: 16 bytes, one cache line for a step down a tree.
NODE_DTYPE = np.dtype([("left", "<i4"), ("right", "<i4"), ("feature", "<i4"), ("threshold", "<f4")])


def _packed_nodes(children: np.ndarray, feature: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """The nodes as ``NODE_DTYPE`` records, each float64 threshold rounded *down* to a float32.

    The inputs are float32 values, and for a float32 ``x`` and the greatest float32 ``t32 <= t``,
    ``x > t`` exactly when ``x > t32``: if ``x > t`` then ``x > t32``; if ``x > t32`` then ``x`` is at
    least the float32 after ``t32``, which is above ``t`` (else it, not ``t32``, would be the greatest
    float32 ``<= t``). So every comparison goes the way scikit-learn's float64 one does.
    """
    if len(threshold) >= 2**31:
        raise ValueError("forest too large for 32-bit node indices")
    rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold  # rounded to nearest went up: take the float32 below
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    nodes = np.empty(len(threshold), dtype=NODE_DTYPE)
    nodes["left"] = children[0::2]
    nodes["right"] = children[1::2]
    nodes["feature"] = feature
    nodes["threshold"] = rounded
    return nodes
