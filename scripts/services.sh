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
# Ports (all on 127.0.0.1) can be moved with SWITCHYARD_PG_PORT (default 55432), SWITCHYARD_REDIS_PORT
# (56379), SWITCHYARD_KAFKA_PORT (59092) and SWITCHYARD_KAFKA_CONTROLLER_PORT (59093), e.g. to run a
# second set next to the usual one: give that set its own SWITCHYARD_SERVICES_DIR as well.
# The code for each service is in scripts/services/*.sh, sourced below. See docs/services.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
STATE=${SWITCHYARD_SERVICES_DIR:-$REPO/.services}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac

HOST=127.0.0.1
PG_PORT=${SWITCHYARD_PG_PORT:-55432}
REDIS_PORT=${SWITCHYARD_REDIS_PORT:-56379}
KAFKA_PORT=${SWITCHYARD_KAFKA_PORT:-59092}
KAFKA_CONTROLLER_PORT=${SWITCHYARD_KAFKA_CONTROLLER_PORT:-59093}
KAFKA_START_TIMEOUT=${SWITCHYARD_KAFKA_START_TIMEOUT:-90}

# shellcheck source=services/common.sh
source "$SCRIPT_DIR/services/common.sh"

for port_var in PG_PORT REDIS_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT; do
  if ! [[ ${!port_var} =~ ^[1-9][0-9]{0,4}$ ]] || ((${!port_var} > 65535)); then
    die "SWITCHYARD_$port_var='${!port_var}' is not a TCP port" "set it to a number from 1 to 65535, or unset it"
  fi
done

# each defines its service's paths and URL and its functions (pg_*, redis_*, kafka_*)
# shellcheck source=services/postgres.sh
source "$SCRIPT_DIR/services/postgres.sh"
# shellcheck source=services/redis.sh
source "$SCRIPT_DIR/services/redis.sh"
# shellcheck source=services/kafka.sh
source "$SCRIPT_DIR/services/kafka.sh"

# ---------------------------------------------------------------- main

print_env() {
  echo "export SWITCHYARD_TEST_DATABASE_URL=$PG_URL"
  echo "export SWITCHYARD_TEST_REDIS_URL=$REDIS_URL"
  echo "export SWITCHYARD_TEST_KAFKA_BROKERS=$KAFKA_BROKERS"
}

# prints lines 2-11 of this file (BASH_SOURCE[0] here is this file, where usage is defined)
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
