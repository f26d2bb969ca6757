# Neon's compute (its PostgreSQL 17 fork with the `neon` and `neon_rmgr` extensions), from
# the build named by NEON_COMPUTE_DIST, unpacked at its configure prefix /opt/neon-compute/pg17
# (the binaries' RUNPATH, so they load the build's own libpq), with every shared library
# `ldd` names for its binaries and modules at their own paths, dash as /bin/sh with
# cat/sleep/rm/mv/locale and curl (the timeline's creation over the safekeepers' HTTP API
# with a generation) for scripts/docker/neon-compute-entrypoint. Assembled by
# scripts/docker/build. PostgreSQL runs as the unprivileged `postgres` (uid 999) of the
# image's /etc/passwd; initdb makes its data directory at the first start, inside the
# /var/lib/neon volume.
FROM scratch
COPY rootfs/ /
COPY --chown=999:999 home/ /var/lib/neon/
ENV PATH=/opt/neon-compute/pg17/bin:/usr/local/bin:/bin \
    PGDATA=/var/lib/neon/data \
    TZ=UTC \
    LANG=C
USER 999:999
WORKDIR /var/lib/neon
VOLUME /var/lib/neon
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/neon-compute-entrypoint"]
