# PostgreSQL for scripts/services.sh: install, cluster init, config, start/stop/status (pg_*).
# Sourced by scripts/services.sh (not run on its own); uses its settings (STATE, HOST, PG_PORT) and
# the helpers of services/common.sh.
# shellcheck shell=bash

PG_DIR=$STATE/postgres
# when the state dir is not reachable for the postgres user, $STATE/postgres is a symlink (see pg_init)
[[ -L $PG_DIR ]] && PG_DIR=$(readlink -f "$PG_DIR")
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/postgres.log
PG_SUPERPW=$PG_DIR/superuser.password
PG_URL="postgres://switchyard:switchyard@$HOST:$PG_PORT/switchyard"

PG_BIN=
find_pg_bin() {
  local want='' d
  [[ -r $PG_DATA/PG_VERSION ]] && want=$(<"$PG_DATA/PG_VERSION")
  if [[ -n $want ]]; then
    d=/usr/lib/postgresql/$want/bin
    [[ -x $d/pg_ctl ]] && { PG_BIN=$d; return 0; }
    return 1
  fi
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [[ -n $d && -x $d/pg_ctl && -x $d/initdb ]] || return 1
  PG_BIN=$d
}

# Run a PostgreSQL server binary as the non-root owner of the cluster.
pg_as_owner() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_pid() {
  local pid
  pid=$(read_pid "$PG_DATA/postmaster.pid")
  [[ -n $pid && -e /proc/$pid ]] || return 1
  # the postmaster runs with its data directory as working directory
  [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$PG_DATA" ]] || return 1
  echo "$pid"
}

pg_running() { pg_pid >/dev/null; }

pg_superuser_psql() {
  PGPASSWORD=$(<"$PG_SUPERPW") PGCONNECT_TIMEOUT=5 \
    psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U postgres -d postgres
}

pg_install() {
  if ! find_pg_bin || ! command -v psql >/dev/null || ! command -v pg_isready >/dev/null; then
    ensure_packages postgresql
    find_pg_bin || {
      if [[ -r $PG_DATA/PG_VERSION ]]; then
        die "the cluster in $PG_DATA is PostgreSQL $(<"$PG_DATA/PG_VERSION") but /usr/lib/postgresql/$(<"$PG_DATA/PG_VERSION")/bin is missing" \
          "apt-get install postgresql-$(<"$PG_DATA/PG_VERSION"), or delete $PG_DIR to re-create it with the installed version"
      fi
      die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin" "apt-get install -y postgresql"
    }
  fi
  if is_root && ! id postgres >/dev/null 2>&1; then
    die "no 'postgres' system user (PostgreSQL refuses to run as root)" "apt-get install --reinstall postgresql-common"
  fi
}

pg_init() {
  [[ -s $PG_DATA/PG_VERSION ]] && return 0
  mkdir -p "$PG_DIR"
  if is_root; then
    chown postgres:postgres "$PG_DIR"
    chmod 700 "$PG_DIR"
    if ! (cd / && runuser -u postgres -- test -w "$PG_DIR"); then
      # A parent of the state dir is not traversable for other users (e.g. a clone under /root):
      # keep the cluster under /var/lib/postgresql and leave a symlink in the state dir.
      local alt
      alt=/var/lib/postgresql/switchyard-services/$(printf '%s' "$STATE" | sha256sum | cut -c1-12)
      log "postgres: $PG_DIR is not reachable for the postgres user; using $alt (symlinked from $PG_DIR)"
      rmdir "$PG_DIR" 2>/dev/null || die "$PG_DIR is not reachable for the postgres user and not empty" \
        "chmod o+x the parent directories of $STATE, or set SWITCHYARD_SERVICES_DIR to e.g. /var/tmp/switchyard-services"
      mkdir -p "$alt"
      chown postgres:postgres "$(dirname "$alt")" "$alt"
      chmod 700 "$alt"
      ln -s "$alt" "$PG_DIR"
      PG_DIR=$alt PG_DATA=$alt/data PG_LOG=$alt/postgres.log PG_SUPERPW=$alt/superuser.password
      (cd / && runuser -u postgres -- test -w "$PG_DIR") ||
        die "the postgres user cannot write $PG_DIR" "check its ownership: chown -R postgres:postgres $PG_DIR"
    fi
  fi
  log "postgres: creating cluster in $PG_DATA"
  rm -rf "$PG_DATA" "$PG_DIR/data.tmp"
  # superuser password (only used over TCP on 127.0.0.1 by this script)
  (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$PG_SUPERPW")
  is_root && chown postgres:postgres "$PG_SUPERPW"
  pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data.tmp" -U postgres --pwfile="$PG_SUPERPW" \
    --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 || {
    show_tail "$PG_DIR/initdb.log"
    die "initdb failed (log: $PG_DIR/initdb.log)" "fix the cause above, then re-run; a partial cluster is left in $PG_DIR/data.tmp"
  }
  mv "$PG_DIR/data.tmp" "$PG_DATA"
}

pg_write_config() {
  # Rewritten on every start so changes to this script take effect.
  pg_as_owner tee "$PG_DATA/switchyard.conf" >/dev/null <<EOF
# managed by scripts/services.sh -- rewritten on every start
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
synchronous_commit = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  pg_as_owner tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
# managed by scripts/services.sh -- rewritten on every start
# TYPE  DATABASE  USER  ADDRESS        METHOD
host    all       all   $HOST/32   scram-sha-256
EOF
  grep -q "^include_if_exists = 'switchyard.conf'" "$PG_DATA/postgresql.conf" ||
    echo "include_if_exists = 'switchyard.conf'" | pg_as_owner tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

pg_start() {
  pg_install
  if pg_running; then
    log "postgres: already running (pid $(pg_pid)) on $HOST:$PG_PORT"
  else
    pg_init
    pg_write_config
    if [[ -e $PG_DATA/postmaster.pid ]]; then
      log "postgres: removing stale $PG_DATA/postmaster.pid"
      rm -f "$PG_DATA/postmaster.pid"
    fi
    port_open "$PG_PORT" &&
      die "port $HOST:$PG_PORT is already taken by another process" \
        "find it with: ss -ltnp 'sport = :$PG_PORT'  and stop it"
    log "postgres: starting on $HOST:$PG_PORT"
    # 9>&-: the server must not inherit the lock fd (it would hold the lock forever)
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -s start 9>&- || {
      show_tail "$PG_LOG"
      die "postgres did not start (log: $PG_LOG)" "read the log above; to start from scratch: $0 stop postgres && rm -rf $PG_DIR"
    }
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    pg_isready -q -h "$HOST" -p "$PG_PORT" && break
    sleep 0.5
  done
  pg_isready -q -h "$HOST" -p "$PG_PORT" || {
    show_tail "$PG_LOG"
    die "postgres is running but not accepting connections on $HOST:$PG_PORT after 30 s (log: $PG_LOG)" \
      "read the log above; restart with: $0 stop postgres && $0 start postgres"
  }
  [[ -s $PG_SUPERPW ]] ||
    die "superuser password file $PG_SUPERPW is missing" "re-create the cluster: $0 stop postgres && rm -rf $PG_DIR && $0 start postgres"
  pg_superuser_psql <<'SQL' || die "could not create role/database switchyard" "see the psql error above; to start from scratch: $0 stop postgres && rm -rf $PG_DIR"
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'switchyard') THEN
    CREATE ROLE switchyard LOGIN CREATEDB PASSWORD 'switchyard';
  ELSE
    ALTER ROLE switchyard LOGIN CREATEDB PASSWORD 'switchyard';
  END IF;
END
$$;
SELECT 'CREATE DATABASE switchyard OWNER switchyard'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'switchyard') \gexec
SQL
  log "postgres: ready at $PG_URL"
}

pg_stop() {
  local pid
  if pid=$(pg_pid); then
    find_pg_bin || die "PostgreSQL binaries missing, cannot stop pid $pid cleanly" "kill $pid"
    log "postgres: stopping (pid $pid)"
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop || {
      log "postgres: fast shutdown timed out, sending SIGQUIT"
      kill -QUIT "$pid" 2>/dev/null || true
      wait_pid_exit "$pid" 10 || die "postgres (pid $pid) does not stop" "kill -9 $pid"
    }
  else
    if [[ -e $PG_DATA/postmaster.pid ]]; then
      rm -f "$PG_DATA/postmaster.pid"
      log "postgres: not running (removed stale postmaster.pid)"
    else
      log "postgres: not running"
    fi
  fi
}

pg_status() {
  local pid
  if pid=$(pg_pid); then
    if command -v pg_isready >/dev/null && pg_isready -q -h "$HOST" -p "$PG_PORT"; then
      echo "postgres  running  pid $pid  $HOST:$PG_PORT  ready      log $PG_LOG"
    else
      echo "postgres  running  pid $pid  $HOST:$PG_PORT  NOT READY  log $PG_LOG"
      return 1
    fi
  else
    echo "postgres  stopped"
    return 1
  fi
}
