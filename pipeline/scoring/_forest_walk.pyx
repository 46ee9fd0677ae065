# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled walk of :class:`pipeline.scoring.forest.CompiledForest`: each row down each tree in C.

The numpy walk in forest.py advances every (tree, row) path one level per step, a dozen array passes a
level; here one row descends one tree at a time with no temporary arrays. Same flat node arrays, same
comparisons (float32-cast inputs against float64 thresholds), path lengths summed over the trees in the
same order — so the two give the same scores (the tests compare both with scikit-learn's).
"""


def path_lengths(
    const double[:, ::1] rows,
    const Py_ssize_t[::1] children,
    const Py_ssize_t[::1] feature,
    const double[::1] threshold,
    const double[::1] leaf_value,
    const Py_ssize_t[::1] roots,
    double[::1] out,
):
    """``out[i]`` = the sum over trees of the leaf value ``rows[i]`` reaches (leaves are their own children)."""
    cdef Py_ssize_t i, tree, node
    cdef Py_ssize_t n_rows = rows.shape[0]
    cdef Py_ssize_t n_trees = roots.shape[0]
    cdef double total
    with nogil:
        for i in range(n_rows):
            total = 0.0
            for tree in range(n_trees):
                node = roots[tree]
                while children[2 * node] != node:
                    node = children[2 * node + (rows[i, feature[node]] > threshold[node])]
                total = total + leaf_value[node]
            out[i] = total
