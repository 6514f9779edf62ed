# syntax=docker/dockerfile:1
# One image for every Python service (api, worker, stream); docker-compose.yml picks the command.
#
# torch: requirements.txt pins torch==2.13.0. PyPI's Linux x86_64 wheel of that version is the CUDA build
# (it depends on the CUDA 13 runtime wheels: cuda-toolkit 13.0, nvidia-cudnn-cu13, ...), so a plain
# `pip install -r requirements.txt` gives a CUDA-enabled torch; it needs an NVIDIA driver >= 580 on the host.
# TORCH_INDEX_URL installs torch from a PyTorch wheel index first instead, e.g.
#   https://download.pytorch.org/whl/cu128  (a CUDA 12 build for older drivers; use one pytorch.org lists for 2.13.0)
#   https://download.pytorch.org/whl/cpu    (CPU only, a much smaller image; docker-compose.cpu.yml uses it)
ARG PYTHON_IMAGE=python:3.11-slim

# --- deps: a virtualenv with the requirements only, so source edits never re-install torch ---
FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# The pip cache mount keeps the large CUDA wheels across rebuilds without putting them in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' /tmp/requirements.txt)"; \
    fi \
    && pip install -r /tmp/requirements.txt

# --- runtime: the virtualenv plus the source, run as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 nca \
    && useradd --system --uid 10001 --gid nca --create-home --home-dir /home/nca nca
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# The source and the shipped example models stay root-owned, read-only for the services; a worker exports
# finished models to models/jobs/ (Redis holds every model anyway; see docs/deploy.md).
COPY . .
RUN mkdir -p models/jobs && chown nca:nca models/jobs
USER 10001:10001
EXPOSE 8000 8001
CMD ["uvicorn", "backend.api.main:app", "--host", "0.0.0.0", "--port", "8000"]
