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
#
# Ports: CONSOLE_PORT (web, default 8000) and SANDBOX_PORT (sandbox API, default 8100), from
# the environment or make's command line (`make run CONSOLE_PORT=8001`). The processes it
# starts get OPENAI_BASE_URL and SANDBOX_PORT in their environment, which wins over .env
# (settings read .env without overwriting), so a stale port written there earlier cannot
# send the console to the wrong place; the sandbox's host:port is added to
# CONSOLE_ALLOWED_API_HOSTS for the same processes.
#
# Everything it creates (db.sqlite3, logs, the broker folders) is private to the user:
# umask 077, and an existing db.sqlite3 is chmod 0600 (it holds encrypted secrets and
# password hashes; .env beside it is 0600 too).
#
# `scripts/run.sh --check-ports` only checks that both ports are free, then exits.
set -euo pipefail
set -m  # job control: every background child gets its own process group

cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONSOLE_PORT="${CONSOLE_PORT:-8000}"
SANDBOX_PORT="${SANDBOX_PORT:-8100}"
LOG_DIR=var/log

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# check_ports: fail naming the variable to set when a port is not a number or is taken.
check_ports() {
  local name port
  for name in CONSOLE_PORT SANDBOX_PORT; do
    port="${!name}"
    if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
      echo "$name=$port is not a port number (1-65535)." >&2
      return 1
    fi
  done
  if [ "$CONSOLE_PORT" = "$SANDBOX_PORT" ]; then
    echo "CONSOLE_PORT and SANDBOX_PORT are both $CONSOLE_PORT: set one of them to another port." >&2
    return 1
  fi
  for name in CONSOLE_PORT SANDBOX_PORT; do
    port="${!name}"
    if port_open "$port"; then
      echo "Port $port is in use: set $name (make run $name=$((port + 1)))" >&2
      return 1
    fi
  done
}

# env_file_value NAME: NAME's last value in .env, without sourcing it (values may hold
# shell characters).
env_file_value() { sed -n "s/^$1=//p" .env | tail -n 1; }

# secure_database: the SQLite file and its journals are 0600, whether migrate is about to
# create them (umask) or an earlier run left them world-readable.
secure_database() {
  umask 077
  local f
  for f in db.sqlite3 db.sqlite3-wal db.sqlite3-shm; do
    if [ -e "$f" ]; then chmod 600 "$f"; fi
  done
}

case "${1:-}" in
  --check-ports)
    check_ports
    exit
    ;;
  --prepare-only) ;;  # write .env and migrate, start nothing (ports are not needed)
  "") check_ports || exit 1 ;;
  *)
    echo "Usage: scripts/run.sh [--check-ports | --prepare-only]" >&2
    exit 2
    ;;
esac

secure_database
WEB_ADDR="127.0.0.1:$CONSOLE_PORT"
SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT"
export SANDBOX_PORT
export OPENAI_BASE_URL="$SANDBOX_URL/v1"

mkdir -p "$LOG_DIR" var/broker/out var/broker/processed
"$PY" scripts/bootstrap_env.py .env

# The console may send keys only to listed hosts (console/destinations.py): add this run's
# sandbox to the list the environment or .env gives, or to the settings' default list.
allowed="${CONSOLE_ALLOWED_API_HOSTS:-$(env_file_value CONSOLE_ALLOWED_API_HOSTS)}"
allowed="${allowed:-api.openai.com,*.openai.azure.com,*.cognitiveservices.azure.com}"
case ",$allowed," in
  *",127.0.0.1:$SANDBOX_PORT,"*) ;;
  *) allowed="$allowed,127.0.0.1:$SANDBOX_PORT" ;;
esac
export CONSOLE_ALLOWED_API_HOSTS="$allowed"

# Read the demo password from .env without sourcing it (values may hold shell characters);
# an exported CONSOLE_DEMO_ADMIN_PASSWORD wins, as in settings.
if [ -z "${CONSOLE_DEMO_ADMIN_PASSWORD:-}" ]; then
  CONSOLE_DEMO_ADMIN_PASSWORD="$(env_file_value CONSOLE_DEMO_ADMIN_PASSWORD)"
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
    # SIGTERM to each main process only: Celery's warm shutdown then stops its own pool
    # processes (signalling the pool directly makes the worker log each one as an ERROR).
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
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
secure_database
if [ "${1:-}" = "--prepare-only" ]; then
  exit 0
fi

say "Starting the sandbox API on 127.0.0.1:$SANDBOX_PORT"
start sandbox "$PY" manage.py sandbox_api --port "$SANDBOX_PORT"
wait_for_port sandbox "$SANDBOX_PORT" "${PIDS[-1]}"

say "Loading the demo data"
"$PY" manage.py load_demo --sandbox-url "$SANDBOX_URL"
"$PY" manage.py ensure_admin --username admin

say "Starting web, worker and beat"
start web "$PY" manage.py runserver "$WEB_ADDR" --noreload
start worker .venv/bin/celery -A console worker -l info --concurrency 2
start beat .venv/bin/celery -A console beat -l info --schedule var/celerybeat-schedule
wait_for_port web "${WEB_ADDR##*:}" "${PIDS[-3]}"

cat <<MSG

  Console: http://$WEB_ADDR/admin/  login: admin / $CONSOLE_DEMO_ADMIN_PASSWORD
  Sandbox API: $OPENAI_BASE_URL
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
