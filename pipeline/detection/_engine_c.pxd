# Augments pipeline/detection/_engine.py when the build compiles it as its twin pipeline.detection._engine_c (the
# name this file has, which is how Cython finds it; see pipeline/_accel.py): the per-event loop's stores and
# windows are the extension types of pipeline/windows/_windows_c.pxd (their fields read as C struct fields,
# add_at called in C) and event times are C doubles. _engine.py stays the one source of the logic.
cimport cython
# The twin's types are cimported under C-prefixed names: the source imports the same classes from the public
# pipeline.windows, and Cython refuses a Python import over a name cimported from another module.
from pipeline.windows._windows_c cimport (
    EntityWindow as CEntityWindow,
    SubjectWindow as CSubjectWindow,
    TokenWindow as CTokenWindow,
    WindowStore as CWindowStore,
)


@cython.locals(
    jti_store=CWindowStore, sub_store=CWindowStore, ip_store=CWindowStore, window=CSubjectWindow, token=CTokenWindow,
    ts=double, watermark=double, max_ts=double, tick_end=double, grace=double, bucket_s=double, age=double,
    bucket=long, number=long, late=long, prefix="long long", row=int, trusted=bint, lifetimes=dict,
    alerts=list,
)
cpdef list _ingest(engine, batch)


@cython.locals(window=CEntityWindow, due=list)
cpdef list _due(dict entities, set touched, double rescore_s)
