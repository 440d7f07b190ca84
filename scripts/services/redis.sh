# Redis for scripts/services.sh: install, start/stop/status (redis_*).
# Sourced by scripts/services.sh (not run on its own); uses its settings (STATE, HOST, REDIS_PORT)
# and the helpers of services/common.sh.
# shellcheck shell=bash

REDIS_DIR=$STATE/redis
REDIS_PID=$REDIS_DIR/redis.pid
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_URL="redis://$HOST:$REDIS_PORT"

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
