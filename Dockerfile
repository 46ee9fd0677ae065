# jwtwatch: one image for every service (validator, pipeline, alerts, all-in-one).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY models ./models
RUN pip install --no-cache-dir '.[confluent]' && useradd --system --uid 10001 jwtwatch && mkdir /data && chown jwtwatch /data
USER jwtwatch
VOLUME ["/data"]
ENTRYPOINT ["jwtwatch"]
CMD ["--help"]
