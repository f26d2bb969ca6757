# Prometheus for the compose deployment's optional `monitoring` profile: Debian's
# `prometheus` binary with the shared libraries `ldd` names and the dynamic loader (assembled
# by scripts/docker/build in rootfs/), and a config scraping sk1..sk3. Nothing is pulled.
# The TSDB lives in the container (/prometheus): it goes with the container.
FROM scratch
COPY rootfs/ /
COPY --chown=65534:65534 data/ /prometheus/
# The Go resolver: service names through Docker's DNS, no libnss needed.
ENV GODEBUG=netdns=go
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
