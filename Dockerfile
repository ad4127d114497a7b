# syntax=docker/dockerfile:1
# The operator image for builders with a container engine. It holds the same
# files as image/build.sh produces without one (`make image`): the static musl
# `partnerplane` binary, the non-root user 65532 from image/rootfs/etc and a
# CA bundle — no shell, no package manager.
#
#   docker build -t partnerplane/operator:dev .

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev ca-certificates
WORKDIR /src
COPY . .
# Paths are remapped as image/build.sh does, so the binary does not name the build folder.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=/src=/src --remap-path-prefix=/usr/local/cargo=/cargo -C strip=symbols"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p partnerplane \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/partnerplane /rootfs/partnerplane
RUN install -D -m 0644 image/rootfs/etc/passwd /rootfs/etc/passwd \
 && install -D -m 0644 image/rootfs/etc/group /rootfs/etc/group \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && install -d -m 1777 /rootfs/tmp

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title=partnerplane \
      org.opencontainers.image.description="Kubernetes operator for white-label partner intelligence tenants" \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.licenses=Apache-2.0
COPY --from=build /rootfs/ /
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/partnerplane"]
