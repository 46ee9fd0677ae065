# Types of _forest_walk.pyx, the compiled walk that scripts/build-accel builds (forest.py falls back to numpy).
import numpy as np
import numpy.typing as npt

def path_lengths(
    rows: npt.NDArray[np.float32],
    nodes: npt.NDArray[np.void],
    leaf_value: npt.NDArray[np.float64],
    roots: npt.NDArray[np.intp],
    out: npt.NDArray[np.float64],
) -> None: ...
