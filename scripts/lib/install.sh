# Sourced by scripts/test and scripts/quickstart: installs what they need on a fresh Debian
# machine when it is missing. Defines `as_root` and `install_postgres [extra packages...]`.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# PostgreSQL 15 (server, client tools, pgbench) from Debian's packages, plus any extra
# packages named, then an unprivileged `postgres` user when running as root (PostgreSQL
# refuses to run as root). Puts PostgreSQL's bin directory first on PATH.
install_postgres() {
    local pg_bindir=/usr/lib/postgresql/15/bin
    local need_pkgs=("$@")
    [ -x "$pg_bindir/initdb" ] || need_pkgs+=(postgresql-15)
    command -v psql >/dev/null 2>&1 && command -v pg_receivewal >/dev/null 2>&1 \
        || need_pkgs+=(postgresql-client-15)
    [ -x "$pg_bindir/pgbench" ] || need_pkgs+=(postgresql-contrib)
    if [ ${#need_pkgs[@]} -gt 0 ]; then
        printf '\n==> installing %s (Debian packages)\n' "${need_pkgs[*]}" >&2
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            "${need_pkgs[@]}"
    fi
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        printf '\n==> creating the unprivileged user postgres to run PostgreSQL\n' >&2
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    fi
    export PATH="$pg_bindir:$PATH"
}
