# The compute: PostgreSQL 15 from this machine's install (server programs, lib and share
# dirs, and every shared library `ldd` names, at their own paths), dash as /bin/sh with
# sleep/rm/mv/locale for the entrypoint and initdb, and the static `walproposer` for the
# bridge (and `walproposer membership`, with this machine's CA bundle for its HTTP client;
# see scripts/docker/build). PostgreSQL runs as the unprivileged `postgres` (uid 999) of the image's own
# /etc/passwd; its data directory is made by initdb at the first start, inside the
# /var/lib/postgresql volume (which takes the ownership of the image's directory).
FROM scratch
COPY rootfs/ /
COPY --chown=999:999 home/ /var/lib/postgresql/
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/bin \
    PGDATA=/var/lib/postgresql/data \
    TZ=UTC \
    LANG=C \
    NO_COLOR=1
USER 999:999
WORKDIR /var/lib/postgresql
VOLUME /var/lib/postgresql
EXPOSE 5432
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/compute-entrypoint"]
