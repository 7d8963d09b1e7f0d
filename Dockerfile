# meshmon: the agent and the aggregator in one slim image, run as a non-root user.
#
#   docker build -t meshmon:0.1.0 .
#   docker run -d --name meshmon --network host --cap-drop ALL --cap-add NET_RAW \
#     -v /etc/meshmon:/etc/meshmon:ro -v meshmon-data:/var/lib/meshmon meshmon:0.1.0
#
# The agent needs one capability, CAP_NET_RAW, for raw ICMP sockets (ping, ICMP traceroute)
# where the kernel's unprivileged "ping sockets" are not allowed (net.ipv4.ping_group_range;
# Docker opens them in a container's own network namespace, the host network may not). A
# non-root process gets no capability from Docker or Kubernetes by itself, so the interpreter
# carries a file capability, cap_net_raw+p: permitted, not effective. The agent raises it to
# effective just before it opens a raw socket (meshmon/probes/capabilities.py). With "+ep" the
# kernel would refuse to start Python at all in a container without NET_RAW, the aggregator's
# included. Any other capability is dropped by `--cap-drop ALL`.
#
# Health: HEALTHCHECK asks /healthz on the metrics listener, which the config must enable:
#   [metrics]              (agent)            [aggregator.metrics]  (aggregator)
#   listen = "0.0.0.0:9108"                   listen = "0.0.0.0:9108"
# It costs a bare Python start (~40 ms of CPU); `meshmon status` over the control socket
# would also work without the listener but imports the whole CLI (~0.6 s of CPU per check on
# the host it is a guest of). Set MESHMON_HEALTH_URL for another port, or run with
# --no-healthcheck where the listener stays off.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: the wheel and its dependencies, installed into a venv that is copied whole --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshmon ./meshmon
COPY aggregator ./aggregator
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/meshmon \
 && /opt/meshmon/bin/pip install /wheels/meshmon-*.whl

# --- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="meshmon" \
      org.opencontainers.image.description="A peer-to-peer mesh of network monitoring agents" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/meshmon /opt/meshmon
ENV PATH=/opt/meshmon/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MESHMON_CONFIG=/etc/meshmon/agent.toml \
    MESHMON_HEALTH_URL=http://127.0.0.1:9108/healthz
# a system user with a fixed uid (volumes and hostPath folders can be chowned to it); no
# set-uid or set-gid program left in the image; CAP_NET_RAW permitted to the interpreter
RUN groupadd --system --gid 10001 meshmon \
 && useradd --system --uid 10001 --gid meshmon --home-dir /var/lib/meshmon --no-create-home \
      --shell /usr/sbin/nologin meshmon \
 && install -d -o meshmon -g meshmon -m 0750 /var/lib/meshmon /var/lib/meshmon-aggregator \
 && install -d -m 0755 /etc/meshmon \
 && find / -xdev -type f -perm /6000 -exec chmod a-s {} + \
 && python -c "import sys; from meshmon.probes.capabilities import grant; grant(sys.argv[1])" \
      "$(readlink -f /opt/meshmon/bin/python)"
USER 10001:10001
WORKDIR /var/lib/meshmon
# gossip (UDP) and mTLS streams (TCP), the aggregator's HTTPS, the metrics/health listener
EXPOSE 7946/udp 7946/tcp 7947/tcp 9108/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-I", "-c", "import os, urllib.request as u; u.urlopen(os.environ['MESHMON_HEALTH_URL'], timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["meshmon"]
CMD ["agent", "run", "--config", "/etc/meshmon/agent.toml"]
