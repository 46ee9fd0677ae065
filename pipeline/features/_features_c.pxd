# Augments pipeline/features/_features.py when the build compiles it as its twin pipeline.features._features_c (the
# name this file has, which is how Cython finds it; see pipeline/_accel.py): the feature functions take the
# window as the extension type of pipeline/windows/_windows_c.pxd (its fields and methods reached in C) and do
# their arithmetic on C doubles. _features.py stays the one definition of every feature.
cimport cython
# The twin's types are cimported under C-prefixed names: the source imports the same classes from the public
# pipeline.windows, and Cython refuses a Python import over a name cimported from another module.
from pipeline.windows._windows_c cimport EntityWindow as CEntityWindow


@cython.locals(now_bucket=long, busiest=long, active=long, mean=double, burstiness=double)
cpdef tuple window_summary(CEntityWindow window, spec, double now)

@cython.locals(horizon=double, lifetime=double, age=double, client_rate=double)
cpdef list token_features(CEntityWindow window, spec, double now, baselines, network_of)

@cython.locals(horizon=double)
cpdef list subject_features(CEntityWindow window, spec, double now, baselines, sub, network_of, sessions=*)

@cython.locals(horizon=double, subjects=long, users=long)
cpdef list ip_features(CEntityWindow window, spec, double now, baselines, ip)
