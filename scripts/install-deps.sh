#!/usr/bin/env bash
# Installs what tributary's tests and benchmarks need: from the distribution's packages
#
#   postgresql-<major>            server binaries under /usr/lib/postgresql/<major>/bin
#   postgresql-<major>-wal2json   the logical decoding plugin (…/<major>/lib/wal2json.so)
#   postgresql-client-<major>     psql, pg_dump, pg_restore
#   prometheus (promtool only)    /usr/local/bin/promtool, for the alert rules' tests
#
# The test suite starts its own throw-away clusters (initdb + pg_ctl into temporary
# directories), so no system cluster is wanted: before the server package is installed for
# the first time, the Debian "main" cluster is disabled and therefore never created or
# started.
#
# Idempotent: when the binaries are already there, apt is not touched at all.
#
# promtool (`promtool check rules`, `promtool test rules` on deploy/prometheus) is extracted
# from the distribution's `prometheus` package (Debian 12: 2.42) with `apt-get download` and
# `dpkg-deb -x`: the package itself is never installed, so no Prometheus server is
# installed, enabled or started.
#
# Environment:
#   PG_MAJOR   PostgreSQL major version (default: the distribution's, e.g. 15 on Debian 12)
#   DRY_RUN=1  print the commands that would change the system instead of running them
#   PROMTOOL   where promtool goes (default /usr/local/bin/promtool; the tests look for
#              promtool on PATH, or at TRIBUTARY_PROMTOOL)
#   TRIBUTARY_PG_VERSIONS  the other majors of the test suite's version matrix, installed
#              by scripts/install-pg-versions.sh (default "13 14 16 17 18"; empty: none)
#
# Usage: scripts/install-deps.sh   (as root, or as a user who may use sudo)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# ucf (which installs /etc/postgresql-common/createcluster.conf) keeps an existing file
# instead of asking.
export UCF_FORCE_CONFFOLD=1

DRY_RUN="${DRY_RUN:-0}"
CREATECLUSTER_CONF=/etc/postgresql-common/createcluster.conf
CREATECLUSTER_DIR=/etc/postgresql-common/createcluster.d
DROPIN="$CREATECLUSTER_DIR/00-tributary-no-main-cluster.conf"

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# The distribution's PostgreSQL major version, from /etc/os-release; for a release not listed
# here, from what the `postgresql` metapackage depends on.
distribution_major() {
    local id="" codename=""
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        id="$(. /etc/os-release && echo "${ID:-}")"
        # shellcheck disable=SC1091
        codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    fi
    case "$id/$codename" in
        debian/bullseye) echo 13; return ;;
        debian/bookworm) echo 15; return ;;
        debian/trixie) echo 17; return ;;
        ubuntu/jammy) echo 14; return ;;
        ubuntu/noble) echo 16; return ;;
    esac
    local major
    major="$(apt-cache depends postgresql 2>/dev/null |
        sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n1)"
    [ -n "$major" ] || die "cannot tell the distribution's PostgreSQL version ($id/$codename); set PG_MAJOR"
    echo "$major"
}

PG_MAJOR="${PG_MAJOR:-$(distribution_major)}"
case "$PG_MAJOR" in
    '' | *[!0-9]*) die "PG_MAJOR must be a major version number such as 15, got '$PG_MAJOR'" ;;
esac

PREFIX="/usr/lib/postgresql/$PG_MAJOR"
SERVER_PKG="postgresql-$PG_MAJOR"
WAL2JSON_PKG="postgresql-$PG_MAJOR-wal2json"
CLIENT_PKG="postgresql-client-$PG_MAJOR"

# One file per package tells whether it is installed; apt is skipped when all are.
missing=()
[ -x "$PREFIX/bin/postgres" ] || missing+=("$SERVER_PKG")
[ -f "$PREFIX/lib/wal2json.so" ] || missing+=("$WAL2JSON_PKG")
[ -x "$PREFIX/bin/psql" ] || missing+=("$CLIENT_PKG")

# The other majors of the test suite's version matrix (scripts/install-pg-versions.sh).
install_versions() {
    if [ "${TRIBUTARY_PG_VERSIONS-unset}" = "" ]; then
        log "TRIBUTARY_PG_VERSIONS is empty: no other PostgreSQL versions"
    elif [ "$DRY_RUN" = 1 ]; then
        log "would run: scripts/install-pg-versions.sh"
    else
        "${SUDO[@]}" "$(dirname "$0")/install-pg-versions.sh"
    fi
}

# True when apt knows an installation candidate for every package given.
have_candidates() {
    local pkg candidate
    for pkg in "$@"; do
        candidate="$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
        if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
            return 1
        fi
    done
}

PROMTOOL="${PROMTOOL:-/usr/local/bin/promtool}"

# Only the promtool binary of the `prometheus` package: downloaded, unpacked into a
# temporary directory, copied; dpkg never sees the package, so none of its maintainer
# scripts (which enable and start the server) runs.
install_promtool() {
    if [ -x "$PROMTOOL" ]; then
        log "promtool is already installed: $PROMTOOL"
        return
    fi
    if [ "$DRY_RUN" = 1 ]; then
        log "would extract promtool from the prometheus package into $PROMTOOL"
        return
    fi
    have_candidates prometheus || "${SUDO[@]}" apt-get update
    local tmp
    tmp="$(mktemp -d)"
    # As root, apt downloads as the user _apt, who cannot write into a private directory.
    (cd "$tmp" && "${SUDO[@]}" apt-get download -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/unpacked"
    "${SUDO[@]}" install -D -m 0755 "$tmp/unpacked/usr/bin/promtool" "$PROMTOOL"
    rm -rf "$tmp"
    log "installed $("$PROMTOOL" --version 2>&1 | head -n1) as $PROMTOOL"
}

# mkfs.xfs, for the branch store on a loop-mounted XFS with reflinks (tests/clone_branches.rs).
install_xfsprogs() {
    if command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || [ -x /sbin/mkfs.xfs ]; then
        log "xfsprogs is already installed"
        return
    fi
    if [ "$DRY_RUN" = 1 ]; then
        log "would install xfsprogs"
        return
    fi
    have_candidates xfsprogs || "${SUDO[@]}" apt-get update
    "${SUDO[@]}" apt-get install -y --no-install-recommends xfsprogs
    log "installed xfsprogs"
}

SUDO=()
if [ "${#missing[@]}" -eq 0 ]; then
    log "PostgreSQL $PG_MAJOR, wal2json and the client are already installed in $PREFIX"
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    install_promtool
    install_xfsprogs
    install_versions
    exit 0
fi
log "PostgreSQL $PG_MAJOR: missing ${missing[*]}"

# Root, or sudo: only checked now that something has to change.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
        die "not running as root and sudo is not available; run this script as root"
    SUDO=(sudo env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1)
fi

run() {
    if [ "$DRY_RUN" = 1 ]; then
        log "would run: $*"
    else
        log "running: $*"
        "${SUDO[@]}" "$@"
    fi
}

# Writes stdin to a root-owned file.
write_file() {
    local path="$1" contents
    contents="$(cat)"
    if [ "$DRY_RUN" = 1 ]; then
        log "would write $path:"
        printf '%s\n' "$contents" | sed 's/^/    /'
    else
        log "writing $path"
        printf '%s\n' "$contents" | "${SUDO[@]}" tee "$path" >/dev/null
    fi
}

# postgresql-common's maintainer scripts (configure_version in
# /usr/share/postgresql-common/maintscripts-functions) create and start a "main" cluster on
# a version's first install unless
#   pg_conftool /etc/postgresql-common/createcluster.conf show -bs create_main_cluster
# prints "off". That file ends with include_dir '/etc/postgresql-common/createcluster.d',
# whose *.conf files are read in order and override it.
main_cluster_disabled() {
    [ -f "$CREATECLUSTER_CONF" ] && command -v pg_conftool >/dev/null 2>&1 &&
        [ "$(pg_conftool "$CREATECLUSTER_CONF" show -bs create_main_cluster 2>/dev/null || true)" = off ]
}

disable_main_cluster() {
    if [ -f "$PREFIX/bin/postgres" ]; then
        return # the server package is installed already: its first install is over
    fi
    if main_cluster_disabled; then
        log "creation of a default 'main' cluster is already disabled"
        return
    fi
    if [ -f "$CREATECLUSTER_CONF" ]; then
        # postgresql-common is installed: a drop-in leaves its conffile untouched.
        run mkdir -p "$CREATECLUSTER_DIR"
        write_file "$DROPIN" <<'EOF'
# Written by tributary's scripts/install-deps.sh: tests start their own clusters.
create_main_cluster = false
EOF
        if [ "$DRY_RUN" != 1 ] && ! main_cluster_disabled; then
            # A locally edited createcluster.conf without the include_dir line.
            log "appending create_main_cluster = false to $CREATECLUSTER_CONF"
            printf '%s\n' 'create_main_cluster = false' |
                "${SUDO[@]}" tee -a "$CREATECLUSTER_CONF" >/dev/null
        fi
    else
        # postgresql-common is not installed yet: provide the file it would install, with
        # the main cluster disabled. Its postinst keeps an existing file
        # (UCF_FORCE_CONFFOLD), and the include_dir keeps the drop-in mechanism working.
        run mkdir -p "$CREATECLUSTER_DIR" /etc/postgresql-common
        write_file "$CREATECLUSTER_CONF" <<'EOF'
# Written by tributary's scripts/install-deps.sh before postgresql-common was installed:
# tests start their own clusters, so no default "main" cluster is created.
create_main_cluster = false
include_dir '/etc/postgresql-common/createcluster.d'
EOF
    fi
}

apt_install() {
    run apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confold "$@"
}

disable_main_cluster

packages=("$SERVER_PKG" "$WAL2JSON_PKG" "$CLIENT_PKG")
updated=0
if ! have_candidates "${packages[@]}"; then
    log "package lists do not offer ${packages[*]} yet"
    run apt-get update
    updated=1
fi
if [ "$DRY_RUN" = 1 ]; then
    apt_install "${packages[@]}"
elif ! apt_install "${packages[@]}"; then
    # Stale package lists point at files the mirror no longer has.
    [ "$updated" = 0 ] || die "apt-get install failed"
    log "apt-get install failed; refreshing the package lists and retrying"
    run apt-get update
    apt_install "${packages[@]}"
fi

if [ "$DRY_RUN" != 1 ]; then
    [ -x "$PREFIX/bin/postgres" ] || die "$PREFIX/bin/postgres is still missing after installing"
    [ -f "$PREFIX/lib/wal2json.so" ] || die "$PREFIX/lib/wal2json.so is still missing after installing"
    [ -x "$PREFIX/bin/psql" ] || die "$PREFIX/bin/psql is still missing after installing"
fi
log "done: PostgreSQL $PG_MAJOR with wal2json in $PREFIX"
install_promtool
install_xfsprogs
install_versions
