# Augments pipeline/detection/engine.py when scripts/build-accel compiles it: the per-event loop's stores and
# windows are the extension types of pipeline/windows/__init__.pxd (their fields read as C struct fields,
# add_at called in C) and event times are C doubles. engine.py stays the one source of the logic.
cimport cython
from pipeline.windows cimport EntityWindow, SubjectWindow, TokenWindow, WindowStore


@cython.locals(
    jti_store=WindowStore, sub_store=WindowStore, ip_store=WindowStore, window=SubjectWindow, token=TokenWindow,
    ts=double, watermark=double, max_ts=double, tick_end=double, grace=double, bucket_s=double, age=double,
    bucket=long, number=long, late=long, prefix="long long", row=int, trusted=bint, lifetimes=dict,
    alerts=list,
)
cpdef list _ingest(engine, batch)


@cython.locals(window=EntityWindow, due=list)
cpdef list _due(dict entities, set touched, double rescore_s)
