#!/usr/bin/env bash
# A ClickHouse cluster on loopback, for `make test-cluster` and for trying cem on a cluster:
# one ZooKeeper (standalone, Debian's package) and three clickhouse-server processes, as
# 2 shards, the second with 2 replicas:
#
#   node 1  shard 01  replica ch1
#   node 2  shard 02  replica ch2
#   node 3  shard 02  replica ch3
#
#   scripts/cluster.sh install             # ZooKeeper and ClickHouse from apt
#   scripts/cluster.sh up                  # start ZooKeeper and the three servers (idempotent), wait for them
#   scripts/cluster.sh down                # stop everything
#   scripts/cluster.sh stop-node N         # stop one server (outage tests); start-node N brings it back
#   scripts/cluster.sh stop-zookeeper      # ZooKeeper away (outage tests); start-zookeeper brings it back
#   scripts/cluster.sh status | wipe
#
# Everything binds 127.0.0.1. Ports and the data directory come from the environment:
#   CEM_CLUSTER_DIR (.local/cluster)  CEM_CLUSTER_NAME (cem_cluster)  CEM_CLUSTER_ZK_PORT (26181)
#   CEM_CLUSTER_TCP_BASE (26000)      node N's native port is TCP_BASE+N (26001-26003)
#   CEM_CLUSTER_HTTP_BASE (26100)     node N's HTTP port (26101-26103)
#   CEM_CLUSTER_INTERSERVER_BASE (26200)  node N's replication port (26201-26203)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${CEM_CLUSTER_DIR:-$ROOT/.local/cluster}"
NAME="${CEM_CLUSTER_NAME:-cem_cluster}"
ZK_PORT="${CEM_CLUSTER_ZK_PORT:-26181}"
TCP_BASE="${CEM_CLUSTER_TCP_BASE:-26000}"
HTTP_BASE="${CEM_CLUSTER_HTTP_BASE:-26100}"
INTER_BASE="${CEM_CLUSTER_INTERSERVER_BASE:-26200}"
ZK_CLASSPATH="${CEM_ZOOKEEPER_CLASSPATH:-/usr/share/java/zookeeper.jar}"
NODES=(1 2 3)
shard_of() { case $1 in 1) echo 01 ;; *) echo 02 ;; esac; }

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }

install() {
  if command -v clickhouse-server >/dev/null && [ -f "$ZK_CLASSPATH" ]; then return; fi
  log "installing zookeeper, clickhouse-server and clickhouse-client from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper clickhouse-server clickhouse-client >/dev/null
}

# `ruok` answers as soon as the process runs; `srvr` names the mode only once it serves
# requests. A clickhouse-server 18.16 whose first ZooKeeper handshake fails can crash later.
zk_ready() { (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && echo srvr >&3 && timeout 2 cat <&3) 2>/dev/null | grep -q '^Mode: standalone'; }

start_zookeeper() {
  if alive "$(pid_of zookeeper)"; then return; fi
  local dir="$DIR/zookeeper"; mkdir -p "$dir/data"
  # standalone; no AdminServer (it would take port 8080); clients from loopback only
  cat > "$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
maxClientCnxns=0
4lw.commands.whitelist=ruok,srvr,mntr
autopurge.purgeInterval=1
CFG
  log "starting zookeeper on 127.0.0.1:$ZK_PORT"
  nohup java -Xms64m -Xmx256m -cp "$ZK_CLASSPATH" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" \
    >"$dir/zookeeper.log" 2>&1 &
  echo $! > "$DIR/zookeeper.pid"
}

remote_servers() {
  # internal_replication: a Distributed insert writes one replica of a shard, and the
  # replicated table copies it to the others
  local n shard prev=""
  printf '<remote_servers><%s>' "$NAME"
  for n in "${NODES[@]}"; do
    shard=$(shard_of "$n")
    if [ "$shard" != "$prev" ]; then
      [ -n "$prev" ] && printf '</shard>'
      printf '<shard><internal_replication>true</internal_replication>'
      prev=$shard
    fi
    printf '<replica><host>127.0.0.1</host><port>%s</port></replica>' $((TCP_BASE + n))
  done
  printf '</shard></%s></remote_servers>' "$NAME"
}

start_node() {
  local n=$1 dir="$DIR/node$1"
  if alive "$(pid_of "node$n")"; then return; fi
  mkdir -p "$dir/data" "$dir/tmp" "$dir/log" "$dir/users.d" "$dir/user_files" "$dir/format_schemas"
  cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog><size>10M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$((TCP_BASE + n))</tcp_port>
  <http_port>$((HTTP_BASE + n))</http_port>
  <interserver_http_port>$((INTER_BASE + n))</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>134217728</mark_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  $(remote_servers)
  <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>
  <macros><cluster>$NAME</cluster><shard>$(shard_of "$n")</shard><replica>ch$n</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
XML
  cat > "$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage><max_execution_time>300</max_execution_time></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  log "starting clickhouse node $n (shard $(shard_of "$n"), replica ch$n) on 127.0.0.1:$((TCP_BASE + n)) (http $((HTTP_BASE + n)))"
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! > "$DIR/node$n.pid"
}

# up, and talking to ZooKeeper (replicated tables and ON CLUSTER need it)
node_ready() {
  curl -fsS "http://127.0.0.1:$((HTTP_BASE + $1))/ping" >/dev/null 2>&1 &&
    curl -fsS "http://127.0.0.1:$((HTTP_BASE + $1))/" --data-binary "SELECT count() FROM system.zookeeper WHERE path = '/'" >/dev/null 2>&1
}

wait_ready() {
  local deadline=$((SECONDS + ${CEM_CLUSTER_TIMEOUT:-90})) n
  until zk_ready; do
    alive "$(pid_of zookeeper)" || { tail -n 30 "$DIR/zookeeper/zookeeper.log" >&2; die "zookeeper exited"; }
    [ $SECONDS -lt $deadline ] || die "zookeeper did not answer on port $ZK_PORT"
    sleep 0.3
  done
  for n in "$@"; do
    until node_ready "$n"; do
      alive "$(pid_of "node$n")" || { tail -n 20 "$DIR/node$n/log/error.log" "$DIR/node$n/log/stdout.log" >&2 || true; die "node $n exited"; }
      [ $SECONDS -lt $deadline ] || die "node $n did not answer on port $((HTTP_BASE + n))"
      sleep 0.2
    done
  done
  log "ready: zookeeper 127.0.0.1:$ZK_PORT, cluster $NAME on 127.0.0.1:$((TCP_BASE + 1))-$((TCP_BASE + ${#NODES[@]}))"
}

stop_pid() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if alive "$pid"; then
    log "stopping $name (pid $pid)"; kill "$pid"
    for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && kill -9 "$pid" || true
  fi
  rm -f "$DIR/$name.pid"
}

node_arg() { case "${1:-}" in 1|2|3) echo "$1" ;; *) die "name a node: 1, 2 or 3" ;; esac; }

case "${1:-}" in
  install) install ;;
  up)
    install; mkdir -p "$DIR"; start_zookeeper
    wait_ready  # ZooKeeper first: a server that finds none at start fails its first DDL
    for n in "${NODES[@]}"; do start_node "$n"; done
    wait_ready "${NODES[@]}" ;;
  down) for n in "${NODES[@]}"; do stop_pid "node$n"; done; stop_pid zookeeper ;;
  stop-node) stop_pid "node$(node_arg "${2:-}")" ;;
  start-node) n=$(node_arg "${2:-}"); mkdir -p "$DIR"; start_node "$n"; wait_ready "$n" ;;
  stop-zookeeper) stop_pid zookeeper ;;
  start-zookeeper) mkdir -p "$DIR"; start_zookeeper; wait_ready "${NODES[@]}" ;;
  status)
    if alive "$(pid_of zookeeper)"; then echo "zookeeper  running  pid $(pid_of zookeeper)  127.0.0.1:$ZK_PORT"; else echo "zookeeper  stopped"; fi
    for n in "${NODES[@]}"; do
      if alive "$(pid_of "node$n")"; then state="running  pid $(pid_of "node$n")"; else state=stopped; fi
      echo "node $n     $state  shard $(shard_of "$n") replica ch$n  127.0.0.1:$((TCP_BASE + n)) http:$((HTTP_BASE + n))"
    done ;;
  wipe) "$0" down; rm -rf "$DIR" ;;
  *) echo "usage: $0 install|up|down|status|wipe|stop-node N|start-node N|stop-zookeeper|start-zookeeper" >&2; exit 2 ;;
esac
