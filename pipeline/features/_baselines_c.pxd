# Augments pipeline/features/_baselines.py when the build compiles it as its twin pipeline.features._baselines_c
# (the name this file has, which is how Cython finds it; see pipeline/_accel.py): profiles and baselines become
# extension types with C fields, and observe_use — called for every accepted event — a cpdef method.
cimport cython


cdef class SubjectProfile:
    cdef public dict prefixes, families
    cdef public double rate
    cdef public object client


cdef class Baselines:
    cdef public double settle_s, default_client_rate, default_subject_rate, default_ip_subjects, now
    cdef public dict subjects, clients, ips

    @cython.locals(profile=SubjectProfile)
    cpdef observe_use(self, sub, client, prefix, family, double ts)
