#!/usr/bin/env bash
# Real backing services for Switchyard's integration tests, on loopback only.
#
#   scripts/services.sh start [postgres|redis|kafka|all]   install if needed, start, wait until ready
#   scripts/services.sh stop  [postgres|redis|kafka|all]
#   scripts/services.sh status                             exit 0 when all three are up, 3 otherwise
#   scripts/services.sh env                                export lines for the test URLs
#   scripts/services.sh kafka-topics ARGS...               org.apache.kafka.tools.TopicCommand against
#                                                          the local broker (--bootstrap-server is added)
#
# State (data, logs, PID files, Kafka jars) lives in ${SWITCHYARD_SERVICES_DIR:-<repo>/.services}.
# See docs/services.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
STATE=${SWITCHYARD_SERVICES_DIR:-$REPO/.services}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac

HOST=127.0.0.1
PG_PORT=55432
REDIS_PORT=56379
KAFKA_PORT=59092
KAFKA_CONTROLLER_PORT=59093

PG_DIR=$STATE/postgres
# when the state dir is not reachable for the postgres user, $STATE/postgres is a symlink (see pg_init)
[[ -L $PG_DIR ]] && PG_DIR=$(readlink -f "$PG_DIR")
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/postgres.log
PG_SUPERPW=$PG_DIR/superuser.password
PG_URL="postgres://switchyard:switchyard@$HOST:$PG_PORT/switchyard"

REDIS_DIR=$STATE/redis
REDIS_PID=$REDIS_DIR/redis.pid
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_URL="redis://$HOST:$REDIS_PORT"

KAFKA_DIR=$STATE/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_LOG_DIR=$KAFKA_DIR/logs
KAFKA_PROPS=$KAFKA_DIR/server.properties
KAFKA_PID=$KAFKA_DIR/kafka.pid
KAFKA_OUT=$KAFKA_LOG_DIR/kafka.out
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KAFKA_BROKERS="$HOST:$KAFKA_PORT"
KAFKA_START_TIMEOUT=${SWITCHYARD_KAFKA_START_TIMEOUT:-90}

# ---------------------------------------------------------------- helpers

log() { printf '[services] %s\n' "$*" >&2; }

# die WHAT [HOW-TO-FIX...]
die() {
  printf '[services] ERROR: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '[services]   fix: %s\n' "$line" >&2; done
  exit 1
}

show_tail() { # file [lines]
  if [[ -s $1 ]]; then
    printf '[services] ---- last %s lines of %s ----\n' "${2:-40}" "$1" >&2
    tail -n "${2:-40}" "$1" >&2 || true
    printf '[services] ----\n' >&2
  fi
}

is_root() { [[ $EUID -eq 0 ]]; }

# true if something accepts TCP connections on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# proc_cmdline_has PID NEEDLE... : PID is alive and its command line contains every NEEDLE.
# Guards against PID files that outlived a reboot and now name an unrelated process.
proc_cmdline_has() {
  local pid=$1 cmd needle
  shift
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || return 1
  [[ -n $cmd ]] || return 1
  for needle in "$@"; do [[ $cmd == *"$needle"* ]] || return 1; done
}

read_pid() { [[ -r $1 ]] && head -n 1 "$1" 2>/dev/null | tr -dc '0-9' || true; }

# wait_pid_exit PID SECONDS
wait_pid_exit() {
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    [[ -e /proc/$pid ]] || return 0
    sleep 0.1
  done
  return 1
}

APT_UPDATED=0
# ensure_packages PKG... : apt-get install the packages that are not installed yet
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null ||
    die "packages missing: ${missing[*]} (and no apt-get on this machine)" \
      "install them with your package manager, then re-run"
  local sudo=()
  if ! is_root; then
    command -v sudo >/dev/null ||
      die "packages missing: ${missing[*]}; installing them needs root" \
        "run as root, or: apt-get install -y ${missing[*]}"
    sudo=(sudo)
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ((!APT_UPDATED)); then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq ||
      die "apt-get update failed" "check that the Debian mirror is reachable, then re-run"
    APT_UPDATED=1
  fi
  ensure_state_dir
  if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" \
    >>"$STATE/apt.log" 2>&1; then
    show_tail "$STATE/apt.log" 25
    die "apt-get install ${missing[*]} failed (log: $STATE/apt.log)" "run: apt-get update && apt-get install -y ${missing[*]}"
  fi
}

ensure_state_dir() {
  if [[ ! -d $STATE ]]; then
    mkdir -p "$STATE" || die "cannot create state dir $STATE" "set SWITCHYARD_SERVICES_DIR to a writable directory"
    chmod 755 "$STATE"
  fi
}

# Serialise start/stop of concurrent invocations (e.g. two test runs starting at once).
# Every long-running server is launched with 9>&- so it does not inherit (and hold) the lock.
take_lock() {
  ensure_state_dir
  if command -v flock >/dev/null; then
    exec 9>"$STATE/.lock"
    flock -w 600 9 || die "another process has held $STATE/.lock for 10 minutes" \
      "find it with: fuser -v $STATE/.lock (or: ps aux | grep services.sh); wait for it or stop it"
  fi
}

# ---------------------------------------------------------------- PostgreSQL

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

# ---------------------------------------------------------------- Redis

redis_pid() {
  local pid
  pid=$(read_pid "$REDIS_PID")
  proc_cmdline_has "$pid" redis-server ":$REDIS_PORT" || return 1
  echo "$pid"
}

redis_ping() { [[ $(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

redis_start() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    ensure_packages redis-server redis-tools
  fi
  command -v redis-server >/dev/null || die "redis-server not found after install" "apt-get install -y redis-server"
  mkdir -p "$REDIS_DIR"
  if redis_pid >/dev/null; then
    log "redis: already running (pid $(redis_pid)) on $HOST:$REDIS_PORT"
  else
    rm -f "$REDIS_PID"
    port_open "$REDIS_PORT" &&
      die "port $HOST:$REDIS_PORT is already taken by another process" \
        "find it with: ss -ltnp 'sport = :$REDIS_PORT'  and stop it"
    log "redis: starting on $HOST:$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind "$HOST" --daemonize yes --dir "$REDIS_DIR" --save '' \
      --appendonly no --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" >>"$REDIS_LOG" 2>&1 9>&- || {
      show_tail "$REDIS_LOG"
      die "redis-server failed to start (log: $REDIS_LOG)" "read the log above"
    }
  fi
  local i
  for ((i = 0; i < 100; i++)); do
    redis_ping && break
    sleep 0.2
  done
  redis_ping || {
    show_tail "$REDIS_LOG"
    die "redis does not answer PING on $HOST:$REDIS_PORT after 20 s (log: $REDIS_LOG)" \
      "read the log above; restart with: $0 stop redis && $0 start redis"
  }
  log "redis: ready at $REDIS_URL"
}

redis_stop() {
  local pid
  if pid=$(redis_pid); then
    log "redis: stopping (pid $pid)"
    redis-cli -h "$HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" 10 || {
      kill -KILL "$pid" 2>/dev/null || true
      wait_pid_exit "$pid" 5 || die "redis (pid $pid) does not stop" "kill -9 $pid"
    }
  else
    log "redis: not running"
  fi
  rm -f "$REDIS_PID"
}

redis_status() {
  local pid
  if pid=$(redis_pid); then
    if redis_ping; then
      echo "redis     running  pid $pid  $HOST:$REDIS_PORT  ready      log $REDIS_LOG"
    else
      echo "redis     running  pid $pid  $HOST:$REDIS_PORT  NOT READY  log $REDIS_LOG"
      return 1
    fi
  else
    echo "redis     stopped"
    return 1
  fi
}

# ---------------------------------------------------------------- Kafka

JAVA=
find_java() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
  else
    JAVA=$(command -v java || true)
  fi
  [[ -n $JAVA ]]
}

kafka_pom_hash() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

kafka_install() {
  local pkgs=()
  command -v kcat >/dev/null || pkgs+=(kcat)
  find_java || pkgs+=(openjdk-17-jre-headless)
  ((${#pkgs[@]})) && ensure_packages "${pkgs[@]}"
  find_java || die "java not found" "apt-get install -y openjdk-17-jre-headless (Kafka needs Java 17+)"
  command -v kcat >/dev/null || die "kcat not found" "apt-get install -y kcat"

  # jars: fetched once per version of scripts/kafka/pom.xml
  local want
  want=$(kafka_pom_hash)
  if [[ -f $KAFKA_LIBS/.complete && $(<"$KAFKA_LIBS/.complete") == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || ensure_packages maven
  command -v mvn >/dev/null || die "mvn not found" "apt-get install -y maven"
  log "kafka: fetching jars with Maven (one-off, ~55 MB) into $KAFKA_LIBS"
  mkdir -p "$KAFKA_DIR"
  rm -rf "$KAFKA_LIBS.tmp"
  if ! (cd "$KAFKA_DIR" && mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" \
    dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS.tmp") >"$KAFKA_DIR/mvn.log" 2>&1; then
    show_tail "$KAFKA_DIR/mvn.log"
    die "Maven could not fetch the Kafka jars (log: $KAFKA_DIR/mvn.log)" \
      "check that Maven Central is reachable (and ~/.m2/settings.xml mirrors/proxies), then re-run"
  fi
  ls "$KAFKA_LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 ||
    die "Maven ran but no kafka_2.13 jar landed in $KAFKA_LIBS.tmp" "check $KAFKA_POM and $KAFKA_DIR/mvn.log"
  echo "$want" >"$KAFKA_LIBS.tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

kafka_write_config() {
  mkdir -p "$KAFKA_DATA" "$KAFKA_LOG_DIR"
  cat >"$KAFKA_PROPS" <<EOF
# managed by scripts/services.sh -- rewritten on every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA

# single node
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# tests create their topics explicitly and want fast group joins
auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0

num.network.threads=2
num.io.threads=4
log.retention.hours=24
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# managed by scripts/services.sh -- rewritten on every start
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $KAFKA_LOG_DIR/server.log
appender.file.filePattern = $KAFKA_LOG_DIR/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
  cat >"$KAFKA_DIR/tools-log4j2.properties" <<'EOF'
# managed by scripts/services.sh -- logging for the CLI tools: warnings to stderr
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
EOF
}

kafka_pid() {
  local pid
  pid=$(read_pid "$KAFKA_PID")
  proc_cmdline_has "$pid" kafka.Kafka "$KAFKA_PROPS" || return 1
  echo "$pid"
}

kafka_ready() {
  local out
  out=$(kcat -b "$KAFKA_BROKERS" -L -m 3 2>/dev/null) || return 1
  [[ $out == *" 1 brokers:"* ]]
}

kafka_tool() { # main-class args...
  "$JAVA" -Xmx256m -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_format() {
  [[ -f $KAFKA_DATA/meta.properties ]] && return 0
  local cid
  if [[ -s $KAFKA_DIR/cluster.id ]]; then
    cid=$(<"$KAFKA_DIR/cluster.id")
  else
    # 16 random bytes, URL-safe base64 without padding = a Kafka Uuid string
    cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    echo "$cid" >"$KAFKA_DIR/cluster.id"
  fi
  log "kafka: formatting storage in $KAFKA_DATA (cluster id $cid)"
  kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_PROPS" >"$KAFKA_LOG_DIR/format.log" 2>&1 || {
    show_tail "$KAFKA_LOG_DIR/format.log"
    die "kafka storage format failed (log: $KAFKA_LOG_DIR/format.log)" "to start from scratch: rm -rf $KAFKA_DATA $KAFKA_DIR/cluster.id"
  }
}

kafka_start() {
  kafka_install
  kafka_write_config
  if kafka_pid >/dev/null; then
    log "kafka: already running (pid $(kafka_pid)) on $KAFKA_BROKERS"
  else
    rm -f "$KAFKA_PID"
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
      port_open "$p" &&
        die "port $HOST:$p is already taken by another process" "find it with: ss -ltnp 'sport = :$p'  and stop it"
    done
    kafka_format
    log "kafka: starting on $KAFKA_BROKERS (controller $HOST:$KAFKA_CONTROLLER_PORT)"
    echo "==== $(date -Is) start" >>"$KAFKA_OUT"
    # setsid: own session, so a Ctrl-C in the calling terminal does not take the broker down
    setsid "$JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_LOG_DIR" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" </dev/null >>"$KAFKA_OUT" 2>&1 9>&- &
    echo $! >"$KAFKA_PID"
  fi
  local pid i
  pid=$(read_pid "$KAFKA_PID")
  for ((i = 0; i < KAFKA_START_TIMEOUT; i++)); do
    kafka_ready && break
    if ! proc_cmdline_has "$pid" kafka.Kafka; then
      show_tail "$KAFKA_OUT" 20
      show_tail "$KAFKA_LOG_DIR/server.log"
      die "kafka exited during startup (logs: $KAFKA_LOG_DIR)" \
        "read the logs above; to start from scratch: $0 stop kafka && rm -rf $KAFKA_DATA $KAFKA_DIR/cluster.id"
    fi
    sleep 1
  done
  kafka_ready || {
    show_tail "$KAFKA_OUT" 20
    show_tail "$KAFKA_LOG_DIR/server.log"
    die "kafka is not serving metadata on $KAFKA_BROKERS after ${KAFKA_START_TIMEOUT}s (logs: $KAFKA_LOG_DIR; pid $pid still running)" \
      "read the logs above; a slow machine may need SWITCHYARD_KAFKA_START_TIMEOUT=180; restart with: $0 stop kafka && $0 start kafka"
  }
  log "kafka: ready at $KAFKA_BROKERS"
}

kafka_stop() {
  local pid
  if pid=$(kafka_pid); then
    log "kafka: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" 45 || {
      log "kafka: no clean shutdown after 45 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_pid_exit "$pid" 10 || die "kafka (pid $pid) does not stop" "kill -9 $pid"
    }
  else
    log "kafka: not running"
  fi
  rm -f "$KAFKA_PID"
}

kafka_status() {
  local pid
  if pid=$(kafka_pid); then
    if command -v kcat >/dev/null && kafka_ready; then
      echo "kafka     running  pid $pid  $KAFKA_BROKERS  ready      log $KAFKA_LOG_DIR/server.log"
    else
      echo "kafka     running  pid $pid  $KAFKA_BROKERS  NOT READY  log $KAFKA_LOG_DIR/server.log"
      return 1
    fi
  else
    echo "kafka     stopped"
    return 1
  fi
}

kafka_topics() {
  [[ -f $KAFKA_LIBS/.complete ]] || die "Kafka jars are not installed yet" "run: $0 start kafka"
  find_java || die "java not found" "apt-get install -y openjdk-17-jre-headless"
  [[ -f $KAFKA_DIR/tools-log4j2.properties ]] || kafka_write_config
  local a extra=(--bootstrap-server "$KAFKA_BROKERS")
  for a in "$@"; do [[ $a == --bootstrap-server* ]] && extra=(); done
  kafka_tool org.apache.kafka.tools.TopicCommand "${extra[@]}" "$@"
}

# ---------------------------------------------------------------- main

print_env() {
  echo "export SWITCHYARD_TEST_DATABASE_URL=$PG_URL"
  echo "export SWITCHYARD_TEST_REDIS_URL=$REDIS_URL"
  echo "export SWITCHYARD_TEST_KAFKA_BROKERS=$KAFKA_BROKERS"
}

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

services_of() {
  case ${1:-all} in
    all) echo postgres redis kafka ;;
    postgres | pg) echo postgres ;;
    redis) echo redis ;;
    kafka) echo kafka ;;
    *) die "unknown service '$1'" "use one of: postgres redis kafka all" ;;
  esac
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
  start)
    [[ $# -le 1 ]] || usage
    svcs=$(services_of "${1:-all}")
    take_lock
    SECONDS=0
    for s in $svcs; do
      case $s in
        postgres) pg_start ;;
        redis) redis_start ;;
        kafka) kafka_start ;;
      esac
    done
    log "started: $svcs (${SECONDS}s). For the tests: eval \"\$($0 env)\""
    ;;
  stop)
    [[ $# -le 1 ]] || usage
    svcs=$(services_of "${1:-all}")
    take_lock
    # reverse order: kafka, redis, postgres
    for s in $(echo "$svcs" | tr ' ' '\n' | tac); do
      case $s in
        postgres) pg_stop ;;
        redis) redis_stop ;;
        kafka) kafka_stop ;;
      esac
    done
    ;;
  status)
    rc=0
    pg_status || rc=3
    redis_status || rc=3
    kafka_status || rc=3
    exit $rc
    ;;
  env) print_env ;;
  kafka-topics) kafka_topics "$@" ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
