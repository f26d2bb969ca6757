# The proposer: one static binary (built by scripts/docker/build), for `walproposer sync`
# and `walproposer generate` against safekeepers on a container network. (The compute image
# carries the same binary for `walproposer bridge`.)
FROM scratch
COPY walproposer /usr/local/bin/walproposer
ENV NO_COLOR=1
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/walproposer"]
CMD ["--help"]
