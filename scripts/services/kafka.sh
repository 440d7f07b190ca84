# Kafka (KRaft, broker and controller in one JVM) for scripts/services.sh: Java, jars via Maven from
# scripts/kafka/pom.xml, config, storage format, start/stop/status, kafka-topics (kafka_*).
# Sourced by scripts/services.sh (not run on its own); uses its settings (SCRIPT_DIR, STATE, HOST,
# KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_START_TIMEOUT) and the helpers of services/common.sh.
# shellcheck shell=bash

KAFKA_DIR=$STATE/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_LOG_DIR=$KAFKA_DIR/logs
KAFKA_PROPS=$KAFKA_DIR/server.properties
KAFKA_PID=$KAFKA_DIR/kafka.pid
KAFKA_OUT=$KAFKA_LOG_DIR/kafka.out
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
# shellcheck disable=SC2153 # KAFKA_PORT is set by scripts/services.sh
KAFKA_BROKERS="$HOST:$KAFKA_PORT"

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
    # 16 random bytes, URL-safe base64 without padding = a Kafka Uuid string. Not one
    # starting with '-': kafka-storage takes it for an option (1 in 64; failed a CI run).
    cid=-
    while [[ $cid == -* ]]; do
      cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
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
