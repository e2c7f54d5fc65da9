# keygate container image.
#
#   docker build -t keygate .
#   docker run -d --name keygate -p 8080:8080 -p 127.0.0.1:8081:8081 \
#     -e KEYGATE_UPSTREAM__URL=http://api.internal:9000 \
#     -e KEYGATE_ADMIN_TOKEN="$(openssl rand -hex 32)" \
#     -v keygate-data:/var/lib/keygate keygate
#
# Two stages: the official Rust image compiles the release binary, and a slim
# Debian of the same release (bookworm, so the same glibc the binary was
# linked against) runs it as an unprivileged user. See "Operations" in the
# README for the environment variables, volumes and the compose stack.

# ---------------------------------------------------------------- build stage
FROM rust:1.95-bookworm AS build
WORKDIR /src

# 1. The dependencies alone, as a cached layer: the manifest, the lock file
#    and an empty stub at the path of every target Cargo.toml declares
#    ([lib], [[bin]], [[bench]], [[test]]: Cargo refuses a manifest whose
#    declared targets are missing, even for a build that does not compile
#    them). This layer is rebuilt only when Cargo.toml, Cargo.lock or the
#    stub script change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
COPY deploy/cargo-stubs.sh deploy/cargo-stubs.sh
RUN sh deploy/cargo-stubs.sh \
 && cargo build --release --locked

# 2. The real sources (src/, and migrations/, which sqlx::migrate! embeds at
#    compile time). COPY keeps the files' modification times, which may be
#    older than the stub build's outputs: touch them so Cargo rebuilds the
#    crate instead of keeping the stub binary.
COPY src ./src
COPY migrations ./migrations
RUN find src migrations -type f -exec touch {} + \
 && cargo build --release --locked \
 && cp target/release/keygate /keygate

# -------------------------------------------------------------- runtime stage
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="keygate" \
      org.opencontainers.image.description="API-key authentication gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: the CA bundle for outbound TLS. Nothing else is needed:
# the binary links only glibc and libgcc_s, which the base image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid/gid (10001), so volume ownership and
# Kubernetes' runAsNonRoot work without a name lookup. Its home,
# /var/lib/keygate, is the working directory: the default
# database.url (sqlite://keygate.db?mode=rwc) puts the embedded store there.
RUN groupadd --system --gid 10001 keygate \
 && useradd --system --uid 10001 --gid keygate --no-create-home \
        --home-dir /var/lib/keygate --shell /usr/sbin/nologin keygate \
 && install -d -o keygate -g keygate -m 0750 /var/lib/keygate \
 && install -d -m 0755 /etc/keygate

COPY --from=build /keygate /usr/local/bin/keygate
# The commented default config; mount your own over it (read-only), or point
# KEYGATE_CONFIG (or --config) at another file.
COPY config/keygate.toml /etc/keygate/keygate.toml
COPY deploy/healthcheck.sh /usr/local/bin/keygate-healthcheck

# Configuration comes from the file named by KEYGATE_CONFIG, then from
# KEYGATE_<SECTION>__<KEY> variables, which win over the file, e.g.
#   KEYGATE_UPSTREAM__URL=http://api:9000
#   KEYGATE_DATABASE__URL=postgres://keygate:PASSWORD@postgres:5432/keygate
#   KEYGATE_RATE_LIMIT__BACKEND=redis
#   KEYGATE_RATE_LIMIT__REDIS_URL=redis://redis:6379
#   KEYGATE_LOG__FORMAT=json
# and the admin API's token from KEYGATE_ADMIN_TOKEN (never baked into the
# image: pass it at run time). The default config listens on loopback, which
# is unreachable from outside a container, so the image moves both listeners
# to all interfaces; publish the admin port on the host's loopback only.
ENV KEYGATE_CONFIG=/etc/keygate/keygate.toml \
    KEYGATE_SERVER__LISTEN=0.0.0.0:8080 \
    KEYGATE_SERVER__ADMIN_LISTEN=0.0.0.0:8081

WORKDIR /var/lib/keygate
# The embedded SQLite store (with Postgres, nothing is written here).
VOLUME ["/var/lib/keygate"]
USER 10001:10001

# 8080: the proxy. 8081: the admin API, /metrics, /healthz, /readyz.
EXPOSE 8080 8081

# Liveness: GET /healthz on the admin listener must answer 200. The slim
# image has neither curl nor wget, and installing curl would add about a
# dozen libraries to every image for a probe; the probe is a short bash script
# (bash is in the base image) speaking HTTP/1.1 over bash's /dev/tcp. It
# finds the admin port in KEYGATE_SERVER__ADMIN_LISTEN, so moving the admin
# listener with that variable keeps the probe right.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "/usr/local/bin/keygate-healthcheck"]

# SIGTERM drains in-flight requests for up to server.shutdown_grace (30s by
# default): give `docker stop` at least that long (--time / stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["keygate"]
CMD ["serve"]
