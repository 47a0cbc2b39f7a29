# syntax=docker/dockerfile:1
#
# licensegate as a small static image that runs as non-root: the sidecar
# (`licensegate run`) and the injection webhook (`licensegate inject serve`).
#   docker build -t registry.example.com/licensegate:0.1.0 .
# The manifests under deploy/kubernetes expect the binary at /licensegate and
# user 65532.

ARG RUST_VERSION=1.95

# Build: musl links everything statically (ring, mimalloc and the Rust code),
# so the binary needs no libc at run time.
FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache gcc musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin licensegate \
 && cp target/release/licensegate /licensegate

# Run: distroless static (CA certificates and tzdata, no shell, no package
# manager) as its `nonroot` user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /licensegate /licensegate
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/licensegate"]
CMD ["run", "--config", "/etc/licensegate/config/config.yaml"]
