# jwtwatch: one image for every service (validator, pipeline, alerts, all-in-one).
#
# The wheel is built in a stage of its own, with a C compiler: the build backend's hook (scripts/hatch_build.py)
# compiles the hot path with Cython into it, and JWTWATCH_REQUIRE_ACCEL=1 fails the build rather than ship a
# pure-Python wheel. The image itself has no compiler; it checks that the installed package runs compiled.
FROM python:3.11-slim AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md .gitignore ./
COPY scripts/hatch_build.py scripts/accel_build.py ./scripts/
COPY pipeline ./pipeline
RUN JWTWATCH_REQUIRE_ACCEL=1 pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY models ./models
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/jwtwatch-*.whl)[confluent]" \
    && python -c "import sys, pipeline._accel as a; s = a.status(); sys.exit(None if all(s.values()) else f'not compiled: {s}')" \
    && useradd --system --uid 10001 jwtwatch && mkdir /data && chown jwtwatch /data
USER jwtwatch
VOLUME ["/data"]
ENTRYPOINT ["jwtwatch"]
CMD ["--help"]
