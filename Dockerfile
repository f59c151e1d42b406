# skyrender image for KubeRay. The Ray version must equal pyproject's pin and the RayService's
# rayVersion (a test checks all three). GPU workers: build with
#   --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu --tag ...:0.1.0-gpu
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}

USER root
# Vulkan loader + Mesa: wgpu finds the NVIDIA ICD on GPU nodes, lavapipe elsewhere.
RUN apt-get update && apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers \
    && rm -rf /var/lib/apt/lists/*
USER ray

WORKDIR /opt/skyrender
COPY --chown=ray pyproject.toml README.md serve_config.yaml graph.py ./
COPY --chown=ray skyrender/ skyrender/
COPY --chown=ray deployments/ deployments/
RUN pip install --no-cache-dir ".[serve,sample]"
# Pods start without internet: the sample survey is built into the image.
RUN python -m skyrender.samples build /opt/skyrender/hips/hi4pi
ENV SKYRENDER_SAMPLE_DIR=/opt/skyrender/hips/hi4pi \
    SKYRENDER_CACHE_DIR=/var/cache/skyrender \
    XDG_RUNTIME_DIR=/tmp
