# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled walk of :class:`pipeline.scoring.forest.CompiledForest`: each tree walked for every row in C.

The numpy walk in forest.py advances every (tree, row) path one level per step, a dozen array passes a
level; here the rows descend one tree at a time with no temporary arrays. Two things make it fast:

* each node is one 16-byte record (children, feature, threshold as float32: see ``CompiledForest``), so a
  step down a tree reads one cache line instead of three arrays;
* the loop is over trees, then rows: one tree's nodes stay in the cache while every row of the batch walks
  it, instead of every row streaming all the forest's nodes (megabytes) through the cache.

Path lengths are summed over the trees in the same order for each row as the numpy walk, and the float32
threshold decides every comparison exactly as the float64 one does — so the two walks give the same
scores (the tests compare both with scikit-learn's).
"""

cdef packed struct Node:
    int left
    int right
    int feature
    float threshold


def path_lengths(
    const float[:, ::1] rows,
    const Node[::1] nodes,
    const double[::1] leaf_value,
    const Py_ssize_t[::1] roots,
    double[::1] out,
):
    """``out[i]`` = the sum over trees of the leaf value ``rows[i]`` reaches (leaves are their own children)."""
    cdef Py_ssize_t i, tree, node, child
    cdef Py_ssize_t n_rows = rows.shape[0]
    cdef Py_ssize_t n_trees = roots.shape[0]
    with nogil:
        for i in range(n_rows):
            out[i] = 0.0
        for tree in range(n_trees):
            for i in range(n_rows):
                node = roots[tree]
                while True:
                    if rows[i, nodes[node].feature] > nodes[node].threshold:
                        child = nodes[node].right
                    else:
                        child = nodes[node].left
                    if child == node:
                        break
                    node = child
                out[i] = out[i] + leaf_value[node]
