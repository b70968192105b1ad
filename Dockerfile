# One ward's MonitorMe daemon: slim, non-root, configured by a ward TOML plus MONITORME_* env vars.
#   docker build -t monitorme .
#   docker run -v ./ward.toml:/etc/monitorme/ward.toml:ro -v monitorme-w3:/var/lib/monitorme \
#              -e MONITORME_DATABASE_URL=... -e MONITORME_MQTT_URL=... -p 8080:8080 monitorme
# Stop with a grace period above the daemon's 20 s shutdown deadline: `docker stop -t 45`.
# Needs BuildKit (the default builder since Docker 23) for RUN --mount.
# docs/operations.md has the rest (Kubernetes and systemd examples under deploy/).
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the monitorme wheel and the wheels of its dependencies (all binary on PyPI) ---
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitorme ./monitorme
COPY pipelines ./pipelines
COPY rules ./rules
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- run: the installed wheels only; no compiler, no build backend, no pip, no source tree ---
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 monitorme \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin monitorme \
 && mkdir -p /etc/monitorme /var/lib/monitorme \
 && chown 10001:10001 /var/lib/monitorme && chmod 0700 /var/lib/monitorme
# The wheels are bind-mounted from the build stage, so no layer of this image keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels monitorme \
 && pip uninstall --no-cache-dir -y -q setuptools wheel pip
# Numeric user, so Kubernetes' runAsNonRoot can verify it without looking up a name.
USER 10001:10001
# STATE_DIRECTORY is where the spool goes ($STATE_DIRECTORY/spool/{ward}; MONITORME_SPOOL_DIR wins).
# It holds acknowledged readings while PostgreSQL is away: keep it on a volume that outlives the container.
ENV MONITORME_HTTP=0.0.0.0:8080 \
    MONITORME_LOG_FORMAT=json \
    STATE_DIRECTORY=/var/lib/monitorme \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/monitorme"]
EXPOSE 8080
# Healthy when /healthz answers 200 (the active daemon, or a hot standby waiting for the ward's lock),
# unhealthy when the port accepts but does not answer in time or answers an error. Nothing listening
# counts as healthy: a daemon still starting (migrations, restoring alerts) has not opened it yet.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,socket,sys,urllib.request as u; p=int(os.environ.get('MONITORME_HTTP','0.0.0.0:8080').rsplit(':',1)[1]); s=socket.socket(); s.settimeout(2); r=s.connect_ex(('127.0.0.1',p)); s.close(); sys.exit(0) if r else u.urlopen(f'http://127.0.0.1:{p}/healthz',timeout=3)"]
ENTRYPOINT ["monitorme"]
CMD ["run", "--config", "/etc/monitorme/ward.toml"]
