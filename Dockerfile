# One image for the whole fleet: the operator command `auditflow` and every stage binary
# (audit-enrich, audit-persist, …) in /usr/local/bin. Each container picks its binary with
# `command:` (Compose) or `command:` in the pod spec (Helm), e.g. ["audit-enrich"].
#
#   docker build -t auditflow:local .
#
# Dependencies are compiled in their own layer (cargo-chef): editing the project's sources
# rebuilds only the project, not librdkafka and the ~300 crates under it.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- toolchain + build prerequisites
FROM ${RUST_IMAGE} AS chef
# librdkafka is compiled from source by rdkafka-sys (cmake-build feature) and linked statically;
# it needs cmake and the OpenSSL headers (libcurl is for librdkafka's OIDC support, kept so the
# build matches the CI machine's prerequisites).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev libcurl4-openssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# ---------------------------------------------------------------- dependency recipe
# The recipe holds only manifests and the lock file, so it (and the cook layer below) changes
# only when dependencies do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------- build
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --bins --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins
# Every executable cargo put at the top of target/release is a [[bin]] of Cargo.toml: a new
# stage binary lands in the image without touching this file.
RUN mkdir -p /out \
 && find target/release -maxdepth 1 -type f -perm -u+x -exec cp -t /out {} +

# ---------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE}
# What the binaries link (ldd target/release/audit-enrich): libssl.so.3 and libcrypto.so.3
# (libssl3), libz.so.1 (zlib1g, already in the base image), libgcc_s, libc. librdkafka itself is
# static. ca-certificates: TLS to brokers and PostgreSQL. libcurl is not linked (the rdkafka
# crate is built without its `curl` feature), so libcurl4 is not installed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
# A fixed non-root identity; the Helm chart's securityContext (runAsUser: 10001) matches it.
RUN groupadd --system --gid 10001 auditflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin auditflow
COPY --from=builder /out/ /usr/local/bin/
# The shipped detection rules and compliance mapping; a mounted ConfigMap can replace them.
COPY rules/ /usr/share/auditflow/rules/
COPY config/ /usr/share/auditflow/config/
USER 10001:10001
# Stages serve /metrics, /healthz and /readyz here (AUDITFLOW_HTTP_LISTEN); logs are JSON lines.
ENV AUDITFLOW_HTTP_LISTEN=0.0.0.0:9100 \
    AUDITFLOW_LOG_FORMAT=json \
    AUDITFLOW_RULES_DIR=/usr/share/auditflow/rules
EXPOSE 9100
# Stages stop on SIGTERM: finish the batch, commit, leave the group.
STOPSIGNAL SIGTERM
CMD ["auditflow", "--help"]
