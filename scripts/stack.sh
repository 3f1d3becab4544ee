#!/usr/bin/env bash
# Local stack for cem-pipeline: a real Apache Kafka broker (KRaft, single node) and a real
# ClickHouse server, both bound to 127.0.0.1, installed and run from this repository.
#
#   scripts/stack.sh install   # Kafka jars from Maven Central (cached), ClickHouse from apt
#   scripts/stack.sh up        # start both (idempotent) and wait until both answer
#   scripts/stack.sh down      # stop both
#   scripts/stack.sh status    # what is running, where
#   scripts/stack.sh kafka-stop|kafka-start|clickhouse-stop|clickhouse-start   # one service
#
# Ports and the data directory come from the environment so tests can run their own stack:
#   CEM_STACK_DIR (.local/stack)  CEM_KAFKA_PORT (19092)  CEM_KAFKA_CONTROLLER_PORT (19093)
#   CEM_CLICKHOUSE_PORT (19000)   CEM_CLICKHOUSE_HTTP_PORT (18123)  CEM_KAFKA_VERSION (4.0.1)
#
# A broker that only speaks SASL_SSL (SCRAM-SHA-512 over TLS), as production should:
#   CEM_KAFKA_TLS_DIR     directory with ca.pem, broker.pem (certificate chain) and broker.key
#                         (unencrypted PKCS#8); the certificate must name 127.0.0.1
#   CEM_KAFKA_SCRAM_USERS "admin:secret cem:secret2": SCRAM users created when the storage is
#                         formatted; the first one is the broker's own (inter-broker) user
# The readiness check then connects with CEM_KAFKA__SECURITY__* (see config/cem.yaml).
#
# ClickHouse with a TLS port for the native protocol (clickhouse.secure), beside the plain one:
#   CEM_CLICKHOUSE_TLS_DIR  directory with server.pem (certificate chain) and server.key; the
#                           certificate must name 127.0.0.1
#   CEM_CLICKHOUSE_TLS_PORT (19440) the server's tcp_port_secure
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${CEM_KAFKA_VERSION:-4.0.1}"
KAFKA_LIBS="${CEM_KAFKA_LIBS:-$ROOT/.local/kafka-$KAFKA_VERSION/libs}"
STACK_DIR="${CEM_STACK_DIR:-$ROOT/.local/stack}"
KAFKA_PORT="${CEM_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${CEM_KAFKA_CONTROLLER_PORT:-19093}"
CH_PORT="${CEM_CLICKHOUSE_PORT:-19000}"
CH_HTTP_PORT="${CEM_CLICKHOUSE_HTTP_PORT:-18123}"
CH_TLS_PORT="${CEM_CLICKHOUSE_TLS_PORT:-19440}"
KAFKA_HEAP="${CEM_KAFKA_HEAP:-768m}"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_kafka() {
  if [ -f "$KAFKA_LIBS/.complete" ]; then return; fi
  command -v java >/dev/null || die "java not found (Kafka needs Java 17+)"
  command -v mvn >/dev/null || die "mvn not found (used to fetch Kafka from Maven Central)"
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS" && mkdir -p "$KAFKA_LIBS"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
  touch "$KAFKA_LIBS/.complete"
}

install_clickhouse() {
  if command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null; then return; fi
  log "installing clickhouse-server and clickhouse-client from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
}

kafka_pid() { cat "$STACK_DIR/kafka.pid" 2>/dev/null || true; }
ch_pid() { cat "$STACK_DIR/clickhouse.pid" 2>/dev/null || true; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

kafka_ready() {
  # A metadata request through a real client (with cem's own security settings when the
  # broker is secured): the port being open is not enough.
  CEM_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT" "$ROOT/.venv/bin/python" - <<'PY' 2>/dev/null
from kafka import KafkaAdminClient
from pipeline.kafka import clients as kafka_config
from pipeline.settings import load_settings
c = KafkaAdminClient(**kafka_config.kafka_python(load_settings().kafka), request_timeout_ms=3000)
c.list_topics(); c.close()
PY
}
ch_ready() { curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/ping" >/dev/null 2>&1; }

start_kafka() {
  if alive "$(kafka_pid)"; then log "kafka already running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"; return; fi
  local dir="$STACK_DIR/kafka"; mkdir -p "$dir/data"
  local listener=PLAINTEXT scram_args=()
  if [ -n "${CEM_KAFKA_TLS_DIR:-}" ]; then listener=SASL_SSL; fi
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listener://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listener://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$listener:$listener,CONTROLLER:PLAINTEXT
inter.broker.listener.name=$listener
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
PROPS
  if [ "$listener" = SASL_SSL ]; then
    [ -n "${CEM_KAFKA_SCRAM_USERS:-}" ] || die "CEM_KAFKA_TLS_DIR needs CEM_KAFKA_SCRAM_USERS"
    local first="${CEM_KAFKA_SCRAM_USERS%% *}" pair
    # a PEM key store is one file: the private key, then the certificate chain
    cat "$CEM_KAFKA_TLS_DIR/broker.key" "$CEM_KAFKA_TLS_DIR/broker.pem" > "$dir/keystore.pem"; chmod 600 "$dir/keystore.pem"
    for pair in $CEM_KAFKA_SCRAM_USERS; do scram_args+=(--add-scram "SCRAM-SHA-512=[name=${pair%%:*},password=${pair#*:}]"); done
    cat >> "$dir/server.properties" <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${first%%:*}" password="${first#*:}";
ssl.keystore.type=PEM
ssl.keystore.location=$dir/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CEM_KAFKA_TLS_DIR/ca.pem
ssl.endpoint.identification.algorithm=https
PROPS
  fi
  if [ ! -f "$dir/data/meta.properties" ]; then
    java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format --standalone -t "$(java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
      -c "$dir/server.properties" "${scram_args[@]}" >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "kafka storage format failed"; }
  fi
  log "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  nohup java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 &
  echo $! > "$STACK_DIR/kafka.pid"
}

start_clickhouse() {
  if alive "$(ch_pid)"; then log "clickhouse already running (pid $(ch_pid)) on 127.0.0.1:$CH_PORT"; return; fi
  local dir="$STACK_DIR/clickhouse"; mkdir -p "$dir/data" "$dir/tmp" "$dir/log" "$dir/users.d" "$dir/user_files" "$dir/format_schemas"
  local tls=""
  if [ -n "${CEM_CLICKHOUSE_TLS_DIR:-}" ]; then
    [ -f "$CEM_CLICKHOUSE_TLS_DIR/server.pem" ] && [ -f "$CEM_CLICKHOUSE_TLS_DIR/server.key" ] \
      || die "CEM_CLICKHOUSE_TLS_DIR needs server.pem and server.key"
    # 18.16 reads its TLS settings from <openSSL><server>; clients check the certificate, the
    # server asks for none (verificationMode none)
    tls="<tcp_port_secure>$CH_TLS_PORT</tcp_port_secure>
  <openSSL><server><certificateFile>$CEM_CLICKHOUSE_TLS_DIR/server.pem</certificateFile><privateKeyFile>$CEM_CLICKHOUSE_TLS_DIR/server.key</privateKeyFile><verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile><cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols><preferServerCiphers>true</preferServerCiphers></server></openSSL>"
  fi
  cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog><size>10M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$CH_PORT</tcp_port>
  <http_port>$CH_HTTP_PORT</http_port>
  $tls
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
</yandex>
XML
  cat > "$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage><max_execution_time>300</max_execution_time></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  log "starting clickhouse $(clickhouse-client --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)+' | head -1) on 127.0.0.1:$CH_PORT (http $CH_HTTP_PORT${tls:+, tls $CH_TLS_PORT})"
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! > "$STACK_DIR/clickhouse.pid"
}

wait_ready() {
  local deadline=$((SECONDS + ${CEM_STACK_TIMEOUT:-90}))
  until ch_ready; do
    alive "$(ch_pid)" || { tail -n 20 "$STACK_DIR/clickhouse/log/error.log" "$STACK_DIR/clickhouse/log/stdout.log" >&2 || true; die "clickhouse exited"; }
    [ $SECONDS -lt $deadline ] || die "clickhouse did not answer on port $CH_HTTP_PORT"
    sleep 0.2
  done
  until kafka_ready; do
    alive "$(kafka_pid)" || { tail -n 30 "$STACK_DIR/kafka/kafka.log" >&2; die "kafka exited"; }
    [ $SECONDS -lt $deadline ] || die "kafka did not answer on port $KAFKA_PORT"
    sleep 0.5
  done
  log "ready: kafka 127.0.0.1:$KAFKA_PORT, clickhouse 127.0.0.1:$CH_PORT"
}

stop_pid() {
  local name=$1 pidfile="$STACK_DIR/$1.pid" pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if alive "$pid"; then
    log "stopping $name (pid $pid)"; kill "$pid"
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && kill -9 "$pid" || true
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  install) install_kafka; install_clickhouse ;;
  up) install_kafka; install_clickhouse; mkdir -p "$STACK_DIR"; start_clickhouse; start_kafka; wait_ready ;;
  down) stop_pid kafka; stop_pid clickhouse ;;
  status)
    if alive "$(kafka_pid)"; then echo "kafka       running  pid $(kafka_pid)  127.0.0.1:$KAFKA_PORT  ($KAFKA_VERSION)"; else echo "kafka       stopped"; fi
    if alive "$(ch_pid)"; then echo "clickhouse  running  pid $(ch_pid)  127.0.0.1:$CH_PORT http:$CH_HTTP_PORT${CEM_CLICKHOUSE_TLS_DIR:+ tls:$CH_TLS_PORT}"; else echo "clickhouse  stopped"; fi ;;
  wipe) "$0" down; rm -rf "$STACK_DIR" ;;
  # one service at a time (fault tests and maintenance)
  kafka-stop) stop_pid kafka ;;
  kafka-start) mkdir -p "$STACK_DIR"; start_kafka; wait_ready ;;
  clickhouse-stop) stop_pid clickhouse ;;
  clickhouse-start) mkdir -p "$STACK_DIR"; start_clickhouse; wait_ready ;;
  *) echo "usage: $0 install|up|down|status|wipe|kafka-stop|kafka-start|clickhouse-stop|clickhouse-start" >&2; exit 2 ;;
esac
