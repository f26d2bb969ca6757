# The proposer: one static binary (built by scripts/docker/build) and the CA bundle its HTTP
# client needs, for `walproposer sync`, `walproposer generate` and `walproposer membership`
# against safekeepers on a container network. (The compute image
# carries the same binary for `walproposer bridge`.)
FROM scratch
COPY walproposer /usr/local/bin/walproposer
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV NO_COLOR=1
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/walproposer"]
CMD ["--help"]
