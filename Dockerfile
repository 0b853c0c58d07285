# rlay in two stages: build with the Rust toolchain, run on debian:bookworm-slim. glibc, not
# musl: RocksDB's C++ built against musl is a known source of illegal-instruction crashes.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rlay && cp target/release/rlay /rlay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /rlay /usr/local/bin/rlay
ENV RELAY_DATA_DIR=/data
VOLUME /data
EXPOSE 3000 3001
ENTRYPOINT ["/usr/local/bin/rlay"]
CMD ["serve"]
