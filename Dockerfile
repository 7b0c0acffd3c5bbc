# Tarlatamab (IMDELLTRA) CDS Hooks service.
#
#   docker build -t tarlatamab-cds .
#   docker run -p 8080:8080 \
#     -v "$PWD/issuers.json:/etc/cds/issuers.json:ro" \
#     -e CDS_TRUSTED_ISSUERS_FILE=/etc/cds/issuers.json \
#     -e CDS_PUBLIC_BASE_URL=https://cds.example.org \
#     -v cds-data:/data tarlatamab-cds
#
# The container listens on 0.0.0.0, which the service refuses in open development mode: it needs a trusted
# issuers file (CDS_TRUSTED_ISSUERS_FILE, mounted read-only) so that every CDS client JWT is verified.
# Feedback, the audit log and JWT replay ids live in a SQLite file in /data (a volume), or in the database
# named by CDS_DATABASE_URL (PostgreSQL when several containers run).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package (README.md is the package's readme in pyproject.toml).
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
RUN pip install . && rm -rf /app/cds_service /app/build

# The protocol and the card wording are top-level folders of the repository, not package data.
COPY protocol ./protocol
COPY cards ./cards

RUN groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid cds --home-dir /app --shell /usr/sbin/nologin cds \
    && mkdir -p /data \
    && chown cds:cds /data

ENV CDS_DATA_DIR=/data \
    CDS_PROTOCOL_FILE=/app/protocol/tarlatamab.yaml \
    CDS_CARDS_DIR=/app/cards \
    CDS_HOST=0.0.0.0 \
    CDS_PORT=8080 \
    CDS_WORKERS=2

VOLUME ["/data"]
EXPOSE 8080
USER cds:cds

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CDS_PORT', '8080'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["cds-service"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
