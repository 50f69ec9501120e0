# tributary in a small runtime image: the binary, and the PostgreSQL client programs its
# snapshots run. pg_dump and pg_restore must be at least the source's major version, and
# pg_restore 17 and newer cannot restore into branch stores before 17 (it sets
# transaction_timeout): the newest from apt.postgresql.org is installed for stores of 17
# and newer, and 16 for older ones; the snapshot picks the one that fits.
#
#   docker build -t tributary .
#   docker run --rm -e TRIBUTARY__STORE__URL=… -e TRIBUTARY__SECRETS__KEY=… tributary run
#
# Without TRIBUTARY__SECRETS__KEY the key is the file /var/lib/tributary/tributary.key (the
# image's WORKDIR and the user's home): mount a volume there, or the key the first
# `connector create` makes is lost with the container.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin tributary

FROM debian:bookworm-slim
ARG PG_MAJOR=18
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
        -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
        postgresql-client-16; \
    apt-get purge -y curl gnupg; apt-get autoremove -y; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/tributary --create-home tributary
COPY --from=build /src/target/release/tributary /usr/local/bin/tributary
COPY config/tributary.toml /etc/tributary/tributary.toml
USER 10001:10001
WORKDIR /var/lib/tributary
EXPOSE 9932
# In a container the endpoint must listen beyond loopback for probes and scrapes.
ENV TRIBUTARY__METRICS__LISTEN=0.0.0.0:9932
ENTRYPOINT ["/usr/local/bin/tributary"]
CMD ["run", "--config", "/etc/tributary/tributary.toml"]
