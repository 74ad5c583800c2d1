# syntax=docker/dockerfile:1
#
# Tollgate service images, one target per binary:
#
#   docker build --target auth-service -t tollgate/auth-service .
#
# The builder compiles every binary of the workspace once; each runtime target copies one of
# them into a small Debian image that runs as an unprivileged user (uid 10001). Adding a service
# means adding a target at the bottom of this file, shaped like `auth-service`.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- builder ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# sqlx's compile-time checked queries (if any) use the committed `.sqlx/` data, never a
# database reachable from the build.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
# The registry, git checkouts and target directory live in cache mounts, so a rebuild only
# recompiles what changed. The target directory is not part of the image, hence the copy of
# the finished binaries to /out.
RUN --mount=type=cache,id=tollgate-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=tollgate-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=tollgate-target,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \; \
    && ls -l /out

# --- runtime base -------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates for TLS to databases and collectors; wget for container health checks.
# Versions follow the pinned Debian release's security updates rather than exact pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --no-create-home \
        --home-dir /var/lib/tollgate --shell /usr/sbin/nologin tollgate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/tollgate
# The working directory is writable by the service user: the embedded SQLite default
# (`sqlite://tollgate-auth.db`, used when DATABASE_URL is unset) lands here.
WORKDIR /var/lib/tollgate
ENV RUST_LOG=info
STOPSIGNAL SIGTERM

# --- auth-service -------------------------------------------------------------------------
FROM runtime AS auth-service
COPY --from=builder /out/auth-service /usr/local/bin/auth-service
USER 10001:10001
# Inside a container the listeners must not stay on the loopback defaults.
ENV AUTH_GRPC_ADDR=0.0.0.0:50051 \
    AUTH_HTTP_ADDR=0.0.0.0:8081
EXPOSE 50051 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/readyz"]
# With no subcommand the binary serves; `docker run IMAGE migrate` runs the migrations alone.
ENTRYPOINT ["/usr/local/bin/auth-service"]

# --- usage-service ------------------------------------------------------------------------
FROM runtime AS usage-service
COPY --from=builder /out/usage-service /usr/local/bin/usage-service
USER 10001:10001
ENV USAGE_GRPC_ADDR=0.0.0.0:50052 \
    USAGE_HTTP_ADDR=0.0.0.0:8082
EXPOSE 50052 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8082/readyz"]
ENTRYPOINT ["/usr/local/bin/usage-service"]

# --- ws-gateway ---------------------------------------------------------------------------
FROM runtime AS ws-gateway
COPY --from=builder /out/ws-gateway /usr/local/bin/ws-gateway
USER 10001:10001
ENV GATEWAY_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/ws-gateway"]

# --- demo-agent ---------------------------------------------------------------------------
# The demo agent as an agent backend of its own (gRPC only: `tollgate.agent.v1.AgentBackend`
# and gRPC health); the gateway also runs it in process for `demo=builtin`.
FROM runtime AS demo-agent
COPY --from=builder /out/demo-agent /usr/local/bin/demo-agent
USER 10001:10001
ENV AGENT_ADDR=0.0.0.0:50062
EXPOSE 50062
ENTRYPOINT ["/usr/local/bin/demo-agent"]
