# Augments pipeline/windows/_windows.py when the build compiles it as its twin pipeline.windows._windows_c (the
# name this file has, which is how Cython finds it; see pipeline/_accel.py): the windows and the store become
# extension types with C fields (times as doubles, counters as C integers) and add_at's locals are typed, so
# the per-event path reads and writes struct fields instead of looking attributes up. _windows.py stays the one
# source of the logic; run as pure Python it uses __slots__ classes with the same fields.
cimport cython


cdef class EntityWindow:
    cdef public object counts, key, last_ip, owner, ua_one, ua_many, other_one, other_many
    cdef public bint dirty
    cdef public double first_ts, last_ts, ua_one_ts, other_one_ts, scored_at, learned_at, suspect_since
    cdef public double previous_prefix_ts
    cdef public long head, overflow
    cdef public long long last_prefix, previous_prefix

    @cython.locals(sums=list, busiest=long, active=long, bucket=long, base=long, total=long, row=long)
    cpdef tuple window_counts(self, long now_bucket, long buckets)
    cpdef list ips_within(self, double horizon)
    cpdef list uas_within(self, double horizon)
    cpdef list others_within(self, double horizon)


cdef class SubjectWindow(EntityWindow):
    cdef public object ip_one, ip_many
    cdef public double ip_one_ts


cdef class TokenWindow(SubjectWindow):
    cdef public object client
    cdef public double lifetime, max_age_s


cdef class WindowStore:
    cdef public object spec, entities, window_type, strings
    cdef public long evicted
    cdef public bint track_ips
    cdef long _buckets, _bucket_s, _length_s, _max_distinct

    @cython.locals(
        window=EntityWindow, subject=SubjectWindow, entities=dict, buckets=long, length_s=long, cap=long,
        head=long, base=long, skipped=long, saturated=long,
    )
    cpdef EntityWindow add_at(self, key, double ts, long bucket, long long prefix, ip, user_agent, int row, other=*)


cpdef list _within(one, double one_ts, many, double horizon)
