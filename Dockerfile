# The meshbridge image: `meshbridge` is the entry point; the default command
# runs the demo workload on fake LLM providers and serves /metrics, /healthz
# and /readyz on port 8080. Run `serve` instead with a config file:
#   docker run -v "$PWD/examples/local.toml:/etc/meshbridge.toml:ro" \
#     -e MESHBRIDGE_TOKEN=change-me-please -p 127.0.0.1:8080:8080 \
#     meshbridge:local serve /etc/meshbridge.toml --listen 0.0.0.0:8080
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /tmp/meshbridge
COPY pyproject.toml README.md ./
COPY meshbridge ./meshbridge
COPY providers ./providers
# [postgres]: the usage ledger's PostgreSQL driver ([ledger] url = "postgresql://...").
# The ledger's default SQLite file and its spool live in XDG_STATE_HOME.
RUN pip install ".[postgres]" \
    && rm -rf /tmp/meshbridge \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin meshbridge \
    && install -d -o meshbridge -g meshbridge -m 0700 /var/lib/meshbridge
ENV XDG_STATE_HOME=/var/lib/meshbridge

WORKDIR /
USER meshbridge
EXPOSE 8080
ENTRYPOINT ["meshbridge"]
CMD ["demo", "--listen", "0.0.0.0:8080"]
