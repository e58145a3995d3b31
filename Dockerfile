# The syncjobs image: every backend (embedded SQLite, PostgreSQL, KurrentDB) in one release
# binary, on a slim Debian with a non-root user. docker-compose.yml builds it; CI validates this
# file (hadolint, tests/compose/run) but cannot build it: no Docker engine runs there.
#
#   docker build -t syncjobs .                                   # every backend
#   docker build --build-arg CARGO_FEATURES= -t syncjobs .       # without KurrentDB (minutes less)
#
# Only classic Dockerfile syntax (no BuildKit mounts), so the legacy builder builds it too.

# What CI builds and tests with (the workspace's rust-version is lower; tests/compose/check keeps
# this at or above it). Bookworm, as the runtime stage: the binary links the same glibc.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
# `kurrentdb` by default, so the image can use every store; empty leaves the KurrentDB client
# (tonic, prost, aws-lc: minutes of build on 2 cores) out.
ARG CARGO_FEATURES=kurrentdb
WORKDIR /build

# The dependencies first, in a layer of their own that only a change of the manifests or the
# lock file rebuilds: every workspace member's manifest, with empty stand-ins for its sources.
# tests/compose/check fails when a member of the workspace is missing here.
COPY Cargo.toml Cargo.lock ./
COPY domain/Cargo.toml domain/
COPY actors/Cargo.toml actors/
COPY projections/Cargo.toml projections/
COPY stores/sqlite/Cargo.toml stores/sqlite/
COPY stores/postgres/Cargo.toml stores/postgres/
COPY stores/kurrentdb/Cargo.toml stores/kurrentdb/
COPY bench/Cargo.toml bench/
RUN for member in . domain actors projections stores/sqlite stores/postgres stores/kurrentdb; do \
        mkdir -p "$member/src" && : > "$member/src/lib.rs"; \
    done \
    && mkdir -p bench/src && echo 'fn main() {}' > bench/src/main.rs \
    && echo 'fn main() {}' > src/main.rs \
    && cargo build --release --locked --bin syncjobs --features "$CARGO_FEATURES" \
    && rm -rf src domain/src actors/src projections/src stores/*/src bench/src

# Then the sources. COPY keeps their modification times, which can be older than the stand-ins
# just built: touching every crate root makes cargo rebuild the workspace's own crates rather
# than keep the empty ones.
COPY . .
RUN find src domain/src actors/src projections/src stores/*/src bench/src \
        \( -name lib.rs -o -name main.rs \) -exec touch {} + \
    && cargo build --release --locked --bin syncjobs --features "$CARGO_FEATURES" \
    && install -D -m 0755 target/release/syncjobs /out/syncjobs

FROM debian:bookworm-slim AS runtime
# ca-certificates: a NATS or KurrentDB server reached over TLS is verified against them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 syncjobs \
    && useradd --system --uid 10001 --gid syncjobs --home-dir /var/lib/syncjobs \
        --shell /usr/sbin/nologin syncjobs \
    && install -d -m 0700 -o syncjobs -g syncjobs /var/lib/syncjobs
COPY --from=builder /out/syncjobs /usr/local/bin/syncjobs
COPY docker/healthcheck /usr/local/bin/syncjobs-healthcheck

# Listen on every interface of the container (the binary's own default is loopback only, which
# no published port reaches); the data directory is the volume below, owned by the user.
ENV SYNCJOBS_BIND=0.0.0.0:8001 \
    SYNCJOBS_DATA_DIR=/var/lib/syncjobs
VOLUME ["/var/lib/syncjobs"]
WORKDIR /var/lib/syncjobs
USER 10001:10001
EXPOSE 8001

# GET /health on the node's own port: 200 (healthy, or degraded but serving) passes, anything
# else (503 down, no answer) fails. A bash script, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/syncjobs-healthcheck"]

# Exec form: syncjobs is PID 1 and gets SIGTERM itself, for its graceful stop.
ENTRYPOINT ["/usr/local/bin/syncjobs"]
CMD ["serve"]
