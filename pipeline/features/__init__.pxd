# Augments pipeline/features/__init__.py when scripts/build-accel compiles it: the feature functions take the
# window as the extension type of pipeline/windows/__init__.pxd (its fields and methods reached in C) and do
# their arithmetic on C doubles. __init__.py stays the one definition of every feature.
cimport cython
from pipeline.windows cimport EntityWindow


@cython.locals(now_bucket=long, busiest=long, active=long, mean=double, burstiness=double)
cpdef tuple window_summary(EntityWindow window, spec, double now)

@cython.locals(horizon=double, lifetime=double, age=double, client_rate=double)
cpdef list token_features(EntityWindow window, spec, double now, baselines, network_of)

@cython.locals(horizon=double)
cpdef list subject_features(EntityWindow window, spec, double now, baselines, sub, network_of, sessions=*)

@cython.locals(horizon=double, subjects=long, users=long)
cpdef list ip_features(EntityWindow window, spec, double now, baselines, ip)
