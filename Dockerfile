# Stockaj Rules: the receiver, the workers and the rule-author commands in one image.
#
#   docker build -t stockaj-rules .
#   docker run -e STOCKAJ_WEBHOOK_SECRET=... -p 8000:8000 stockaj-rules            # serve
#   docker run -e REDIS_URL=... -e DATABASE_URL=... stockaj-rules worker
#   docker run -v "$PWD/rules:/app/rules:ro" stockaj-rules check
#   docker run -v "$PWD/rules:/app/rules:ro" -v "$PWD/fixtures:/app/fixtures:ro" stockaj-rules test
#   docker run -e DATABASE_URL=... stockaj-rules db upgrade
#
# The base is a build argument so CI can build on a local Debian base (no registry
# there); any image with python3 (3.11+) and its venv module will do.
ARG BASE_IMAGE=python:3.11-slim

# Builder: a virtual environment with the engine and its dependencies, all from
# wheels (every dependency ships manylinux wheels, so no compiler is installed).
FROM ${BASE_IMAGE} AS builder
# Only for builds behind a TLS-intercepting proxy: a CA bundle mounted into the build
# (CI's scripts/check-container passes it). Never reaches the runtime image.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all: \
    PYTHONDONTWRITEBYTECODE=1
# `python3 -m venv`, not `python`: /usr/local/bin/python3 on the official images,
# /usr/bin/python3 on Debian's.
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, in their own layer, so a code change does not download them again:
# the exact versions of requirements.lock, checked against their hashes (scripts/lock).
COPY pyproject.toml README.md requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --requirement requirements.lock
COPY engine ./engine
COPY actions ./actions
# pip and setuptools are build tools: the runtime venv goes without them (-25 MB).
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/stockaj-rules --help > /dev/null

# Runtime: the base image, the venv and the example rules and fixtures; nothing else.
FROM ${BASE_IMAGE}
# A fixed, non-root uid/gid: files on mounted volumes can be owned to match it, and
# `runAsNonRoot` can verify it.
ARG UID=10001
RUN groupadd --gid "${UID}" stockaj \
    && useradd --uid "${UID}" --gid stockaj --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin stockaj
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The shipped examples, so `check` and `test` work out of the box; mount your own
# over them (read-only is enough: the engine only reads rules and fixtures).
COPY rules/ /app/rules/
COPY fixtures/ /app/fixtures/
# The only place the engine writes: the embedded SQLite database, when DATABASE_URL
# is not set to PostgreSQL. Mount a volume here to keep it.
RUN mkdir /app/data && chown stockaj:stockaj /app/data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    RULES_DIR=/app/rules \
    DATABASE_URL=sqlite+aiosqlite:////app/data/stockaj-rules.db
USER ${UID}:${UID}
EXPOSE 8000
# Python's standard library only: the image carries no curl or wget.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz\", timeout=4).status != 200)"]
ENTRYPOINT ["stockaj-rules"]
CMD ["serve"]
