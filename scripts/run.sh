#!/usr/bin/env bash
# `make run`: the whole console on one machine, with demo data.
#
# Writes .env on the first run (scripts/bootstrap_env.py), migrates, starts the sandbox
# API, loads the demo data, refreshes the "admin" login, then starts the web server, a
# Celery worker and Celery beat. Logs go to var/log/. Ctrl-C (or SIGTERM) stops every
# child: each one runs in its own process group, and the trap signals whole groups, so
# Celery's pool processes go too.
#
# SQLite and a filesystem broker by default; DATABASE_URL / REDIS_URL in the
# environment switch to PostgreSQL and Redis (console/settings.py).
set -euo pipefail
set -m  # job control: every background child gets its own process group

cd "$(dirname "$0")/.."
PY=.venv/bin/python
WEB_ADDR=127.0.0.1:8000
SANDBOX_PORT=8100
LOG_DIR=var/log

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for port in "${WEB_ADDR##*:}" "$SANDBOX_PORT"; do
  if port_open "$port"; then
    echo "Port $port on 127.0.0.1 is already in use (another \`make run\`?). Stop that process first." >&2
    exit 1
  fi
done

mkdir -p "$LOG_DIR" var/broker/out var/broker/processed
"$PY" scripts/bootstrap_env.py .env

# Read the demo password from .env without sourcing it (values may hold shell characters);
# an exported CONSOLE_DEMO_ADMIN_PASSWORD wins, as in settings.
if [ -z "${CONSOLE_DEMO_ADMIN_PASSWORD:-}" ]; then
  CONSOLE_DEMO_ADMIN_PASSWORD="$(sed -n 's/^CONSOLE_DEMO_ADMIN_PASSWORD=//p' .env | tail -n 1)"
fi
export CONSOLE_DEMO_ADMIN_PASSWORD

PIDS=()
NAMES=()
stopping=0

stop_all() {
  [ "$stopping" = 1 ] && return
  stopping=1
  # Ignore further signals while stopping: make forwards its own SIGTERM to this script,
  # and a second signal must not cut the cleanup short.
  trap '' INT TERM
  set +m  # no "Terminated" job notices for the children we stop on purpose
  if [ "${#PIDS[@]}" -gt 0 ]; then
    say "Stopping ${NAMES[*]}"
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    # Give Celery its warm shutdown, then make sure nothing is left.
    for _ in $(seq 1 100); do
      alive=0
      for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  fi
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# start NAME COMMAND...: run COMMAND in the background, output to var/log/NAME.log.
start() {
  local name=$1; shift
  "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  NAMES+=("$name")
  echo "    $name: pid $!, log $LOG_DIR/$name.log"
}

wait_for_port() {
  local name=$1 port=$2 pid=$3
  for _ in $(seq 1 300); do
    port_open "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited during startup; last lines of $LOG_DIR/$name.log:" >&2
      tail -n 20 "$LOG_DIR/$name.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$name did not open port $port within 30 s; see $LOG_DIR/$name.log" >&2
  exit 1
}

say "Migrating the database"
"$PY" manage.py migrate --noinput

say "Starting the sandbox API on 127.0.0.1:$SANDBOX_PORT"
start sandbox "$PY" manage.py sandbox_api --port "$SANDBOX_PORT"
wait_for_port sandbox "$SANDBOX_PORT" "${PIDS[-1]}"

say "Loading the demo data"
"$PY" manage.py load_demo --sandbox-url "http://127.0.0.1:$SANDBOX_PORT"
"$PY" manage.py ensure_admin --username admin

say "Starting web, worker and beat"
start web "$PY" manage.py runserver "$WEB_ADDR" --noreload
start worker .venv/bin/celery -A console worker -l info --concurrency 2
start beat .venv/bin/celery -A console beat -l info --schedule var/celerybeat-schedule
wait_for_port web "${WEB_ADDR##*:}" "${PIDS[-3]}"

cat <<MSG

  Console: http://$WEB_ADDR/admin/  login: admin / $CONSOLE_DEMO_ADMIN_PASSWORD
  Sandbox API: http://127.0.0.1:$SANDBOX_PORT/v1
  Logs: $LOG_DIR/sandbox.log $LOG_DIR/web.log $LOG_DIR/worker.log $LOG_DIR/beat.log

  Press Ctrl-C to stop everything.

MSG

# Run until Ctrl-C, or until any child dies (then stop the others and say which).
set +e
while :; do
  wait -n
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "${NAMES[$i]} stopped unexpectedly; last lines of $LOG_DIR/${NAMES[$i]}.log:" >&2
      tail -n 20 "$LOG_DIR/${NAMES[$i]}.log" >&2
      exit 1
    fi
  done
done
