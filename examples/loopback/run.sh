#!/usr/bin/env bash
# cola-fed deployed on one machine: a SuperLink, two SuperNodes and one run, all on loopback.
#
# For a user who installed the package (pip install "cola-fed[torch]"): no source checkout.
# Run it from the activated environment:
#
#     source .venv/bin/activate && bash run.sh            # insecure
#     source .venv/bin/activate && TLS=1 bash run.sh      # TLS, with a CA made here
#
# Why activated: flower-superlink starts flower-superexec from PATH (and that starts the
# ServerApp, which imports cola_fed). With the environment's bin folder not on PATH, even when
# started by its full path, the SuperLink dies as it starts (FileNotFoundError: [Errno 2] No
# such file or directory: 'flower-superexec'), and SuperNodes started beside it stay up with
# no SuperLink. This script checks PATH before it starts anything.
#
# Settings (environment variables; all optional):
#   WORK        where everything goes: keys, certificates, logs, node state, results
#               (default ./cola-fed-loopback; a second run in it reuses its server key)
#   TLS         1: the SuperLink serves TLS; nodes and flwr verify it with WORK/ca.crt
#   LINK_PORT   the SuperLink's port, for SuperNodes and flwr alike (default 9092)
#   NODE_PORTS  one port per SuperNode for its ClientApp API (flower-supernode --port): two
#               SuperNodes on one machine need two (default "9094 9095"); one node per port
#   ROUNDS      num-server-rounds (default 3)
#   TASK        task.name (default digits: a small model and data set, no download)
#   RUN_CONFIG  more run-config keys: "key=value key=value" (no spaces in a value), e.g.
#               RUN_CONFIG="optimizer.lr=0.01 task.batch-size=16"; not the keys set here
#
# It stops every process it started, by PID (each one and its descendants: their ServerApp and
# ClientApp processes too), when it ends: done, failed or interrupted. Exit code 0 when the
# run completed, else not.
set -euo pipefail

WORK=$(mkdir -p "${WORK:-cola-fed-loopback}" && cd "${WORK:-cola-fed-loopback}" && pwd)
TLS=${TLS:-0}
LINK_PORT=${LINK_PORT:-9092}
read -r -a NODE_PORTS <<< "${NODE_PORTS:-9094 9095}"
ROUNDS=${ROUNDS:-3}
TASK=${TASK:-digits}
FEDERATION=cola-loopback  # the connection's name in flwr's config.toml
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# Colours only on a terminal (https://no-color.org): the ServerApp, whose log flwr streams
# here, cannot see where this script's output goes, so cola-fed's lines follow NO_COLOR.
[ -t 1 ] || export NO_COLOR=1

# 0. The tools, from the environment cola-fed is installed in.
for tool in cola-fed flwr flower-superlink flower-supernode flower-superexec; do
    if ! command -v "$tool" > /dev/null; then
        echo "run.sh: $tool is not on PATH. Activate the environment cola-fed is installed" \
             "in (source .venv/bin/activate): flower-superlink starts flower-superexec" \
             "from PATH." >&2
        exit 1
    fi
done

# The ports must be free: a port something else listens on would pass for the SuperLink.
for port in "$LINK_PORT" "${NODE_PORTS[@]}"; do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
        echo "run.sh: port $port is in use; choose others (LINK_PORT, NODE_PORTS)" >&2
        exit 1
    fi
done

# Every process started below leads its own process group (set -m). On exit, each one and its
# descendants (Flower starts flower-superexec in a session of its own) get SIGTERM, and
# whatever is left after 10 s gets SIGKILL.
set -m
STARTED=()
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2> /dev/null); do
        echo "$child"
        descendants "$child"
    done
}
stop_all() {
    local status=$? pid family=() left
    trap - EXIT INT TERM
    set +e +m  # stop everything, whatever fails on the way; no job notices
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pid=${STARTED[i]}
        family+=("$pid" $(descendants "$pid"))
        kill -TERM -- "-$pid" 2> /dev/null
    done
    [ ${#family[@]} -gt 0 ] && kill -TERM "${family[@]}" 2> /dev/null
    for _ in $(seq 50); do  # up to 10 s (zombies, stopped and not yet reaped, do not count)
        left=$(ps -o stat= -p "$(IFS=,; echo "${family[*]:-0}")" | grep -cv '^Z')
        [ "$left" = 0 ] && break
        sleep 0.2
    done
    [ ${#family[@]} -gt 0 ] && kill -KILL "${family[@]}" 2> /dev/null
    wait 2> /dev/null
    echo "stopped: ${STARTED[*]:-nothing}"
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The server's identity key: nodes pin its fingerprint.
if [ ! -f "$WORK/server-identity.pem" ]; then
    cola-fed keygen --out "$WORK/server-identity.pem" > "$WORK/keygen.txt"
fi
FINGERPRINT=$(sed -n 's/^fingerprint: *//p' "$WORK/keygen.txt" 2> /dev/null || true)
if [ -z "$FINGERPRINT" ]; then
    echo "run.sh: no fingerprint in $WORK/keygen.txt; remove $WORK/server-identity.pem to" \
         "make a new key" >&2
    exit 1
fi
echo "server key: $WORK/server-identity.pem, fingerprint $FINGERPRINT"

# 2. The SuperLink (with TLS: a CA and a certificate for 127.0.0.1 and localhost, made here).
if [ "$TLS" = 1 ]; then
    if [ ! -f "$WORK/server.pem" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=cola-fed loopback CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" \
            2> /dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=localhost" -keyout "$WORK/server.key" -out "$WORK/server.csr" \
            2> /dev/null
        printf 'subjectAltName = DNS:localhost, IP:127.0.0.1\n' > "$WORK/server.ext"
        openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
            -CAcreateserial -days 30 -extfile "$WORK/server.ext" -out "$WORK/server.pem" \
            2> /dev/null
    fi
    LINK_SECURITY=(--ssl-ca-certfile "$WORK/ca.crt" --ssl-certfile "$WORK/server.pem"
                   --ssl-keyfile "$WORK/server.key")
    NODE_SECURITY=(--root-certificates "$WORK/ca.crt")
    CONNECTION="root-certificates = \"$WORK/ca.crt\""
else
    LINK_SECURITY=(--insecure)
    NODE_SECURITY=(--insecure)
    CONNECTION="insecure = true"
fi
FLWR_HOME="$WORK/superlink" flower-superlink "${LINK_SECURITY[@]}" \
    --host 127.0.0.1 --port "$LINK_PORT" --database "$WORK/superlink.db" \
    --disable-runtime-dependency-installation > "$WORK/superlink.log" 2>&1 &
STARTED+=($!)
for try in $(seq 121); do  # up to 60 s for it to listen
    (exec 3<> "/dev/tcp/127.0.0.1/$LINK_PORT") 2> /dev/null && break
    if ! kill -0 "${STARTED[0]}" 2> /dev/null || [ "$try" = 121 ]; then
        echo "run.sh: the SuperLink is not listening; see $WORK/superlink.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "SuperLink on 127.0.0.1:$LINK_PORT (log: $WORK/superlink.log)"

# 3. The SuperNodes: each with its own --port, partition and state dir (kept across restarts).
for i in "${!NODE_PORTS[@]}"; do
    FLWR_HOME="$WORK/node$i" flower-supernode "${NODE_SECURITY[@]}" \
        --superlink "127.0.0.1:$LINK_PORT" --port "${NODE_PORTS[i]}" \
        --node-config "partition-id=$i num-partitions=${#NODE_PORTS[@]} \
state-dir='$WORK/state$i' server-key-fingerprint='$FINGERPRINT'" \
        > "$WORK/node$i.log" 2>&1 &
    STARTED+=($!)
    echo "SuperNode $i: partition $i of ${#NODE_PORTS[@]}, port ${NODE_PORTS[i]}" \
         "(log: $WORK/node$i.log)"
done

# 4. flwr's connection to the SuperLink: a [superlink.NAME] block of its config.toml. It goes
# into WORK/flwr/config.toml (FLWR_HOME below); add the block to ~/.flwr/config.toml to use
# `flwr run ... cola-loopback`, `flwr ls` and the like from any shell.
mkdir -p "$WORK/flwr"
cat > "$WORK/flwr/config.toml" << EOF
[superlink.$FEDERATION]
address = "127.0.0.1:$LINK_PORT"
$CONNECTION
EOF
cat "$WORK/flwr/config.toml"

# 5. The Flower app (a pyproject.toml naming the installed package's apps) and the run config.
cola-fed app --out "$WORK/app"
cat > "$WORK/run.toml" << EOF
num-server-rounds = $ROUNDS
task.name = "$TASK"
strategy.min-available-nodes = ${#NODE_PORTS[@]}
wire.server-key = "$WORK/server-identity.pem"
output-dir = "$WORK/results"
EOF
for pair in ${RUN_CONFIG:-}; do
    echo "$pair" >> "$WORK/run.toml"
done

# 6. The run: flwr streams the ServerApp's log and returns when the run ends (started in the
# background and waited for, so that a signal to this script stops everything at once).
FLWR_HOME="$WORK/flwr" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    flwr run "$WORK/app" "$FEDERATION" --stream --run-config "$WORK/run.toml" < /dev/null &
STARTED+=($!)
wait "$!"
if [ ! "$WORK/results/metrics.json" -nt "$WORK/run.toml" ] \
        || ! grep -q '"stopped-early": null' "$WORK/results/metrics.json"; then
    echo "run.sh: the run did not complete; the ServerApp's log above says why" >&2
    exit 1
fi
echo "results: $WORK/results (metrics.json, adapters/)"
