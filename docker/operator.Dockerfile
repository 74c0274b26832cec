# The operator image: `docker build -f docker/operator.Dockerfile -t genesis-mesh/operator:0.1.0 .`
# (from the repository root). The chart runs `genesis-operator run`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p genesis-operator --bin genesis-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/genesis-operator /usr/local/bin/genesis-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/genesis-operator"]
