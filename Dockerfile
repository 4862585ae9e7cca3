# syntax=docker/dockerfile:1
#
# mtdgate container image.
#
#   docker build -t mtdgate .
#   docker run --rm mtdgate --version
#
# The runtime image reads /etc/mtdgate/mtdgate.toml (mount a ConfigMap or a file
# there); every setting can also be overridden with MTDGATE_SECTION__KEY variables.
# With no file mounted, start it with `run` alone and configure it through the
# environment.

FROM rust:1-bookworm AS builder

# Build dependencies of the librdkafka that rdkafka-sys bundles (with TLS and zlib).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep the crate registry and compiled dependencies between
# builds; the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mtdgate \
 && install -D -m 0755 target/release/mtdgate /out/mtdgate

FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mtdgate \
 && useradd --system --uid 10001 --gid mtdgate --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mtdgate \
 && mkdir -p /etc/mtdgate

COPY --from=builder /out/mtdgate /usr/local/bin/mtdgate
COPY deploy/docker/mtdgate.toml /etc/mtdgate/mtdgate.toml

USER 10001:10001
EXPOSE 9464

ENTRYPOINT ["mtdgate"]
CMD ["run", "--config", "/etc/mtdgate/mtdgate.toml"]
