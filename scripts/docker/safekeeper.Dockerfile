# The safekeeper: one static binary (built by scripts/docker/build) and the CA bundle its
# HTTP client needs (pull_timeline from peers), nothing else.
# Runs as an unprivileged uid; /data (its datadir, a volume) belongs to that uid, and a new
# named volume takes the ownership of the image's /data.
FROM scratch
COPY safekeeper /usr/local/bin/safekeeper
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chown=10001:10001 data/ /data/
ENV NO_COLOR=1
USER 10001:10001
VOLUME /data
EXPOSE 5454 7676
ENTRYPOINT ["/usr/local/bin/safekeeper"]
CMD ["--id", "1", "-D", "/data", "--listen-pg", "0.0.0.0:5454", "--listen-http", "0.0.0.0:7676"]
