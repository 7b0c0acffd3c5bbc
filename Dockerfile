# Tarlatamab (IMDELLTRA) CDS Hooks service: one instance (gunicorn, gevent workers) of the production topology.
#
#   docker build -t tarlatamab-cds .
#   docker compose -f deploy/docker-compose.yml up    # nginx (buffering proxy) + 2 instances + PostgreSQL
#
# Alone (tests, a single site):
#   docker run -p 8080:8080 \
#     -v "$PWD/issuers.json:/etc/cds/issuers.json:ro" \
#     -e CDS_TRUSTED_ISSUERS_FILE=/etc/cds/issuers.json \
#     -e CDS_PUBLIC_BASE_URL=https://cds.example.org \
#     -v cds-data:/data tarlatamab-cds
#
# The container listens on 0.0.0.0, which the service refuses in open development mode: it needs a trusted
# issuers file (CDS_TRUSTED_ISSUERS_FILE, mounted read-only) so that every CDS client JWT is verified.
# Feedback, the audit log and JWT replay ids live in a SQLite file in /data (a volume), or in the database
# named by CDS_DATABASE_URL (PostgreSQL when several containers run). The protocol and the card wording are
# package data of the installed wheel (override with CDS_PROTOCOL_FILE / CDS_CARDS_DIR and a mounted file).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The exact dependency versions of constraints.txt, then the package with its data (protocol/, cards/).
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY cds_service ./cds_service
COPY protocol ./protocol
COPY cards ./cards
RUN pip install -c constraints.txt . && rm -rf /app/cds_service /app/protocol /app/cards /app/build

# A numeric, non-root user (Kubernetes runAsNonRoot checks the number); HOME is not needed by gunicorn (no
# control socket) and /data is the only writable path.
RUN groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin cds \
    && mkdir -p /data \
    && chown 10001:10001 /data

ENV CDS_DATA_DIR=/data \
    CDS_HOST=0.0.0.0 \
    CDS_PORT=8080 \
    CDS_WORKERS=2 \
    CDS_WORKER_CLASS=gevent

VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CDS_PORT', '8080'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["cds-service"]
CMD ["serve"]
