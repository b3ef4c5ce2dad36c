#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the test suite uses (tests/settings.py) answer on
# 127.0.0.1:5432 and 127.0.0.1:6379. Starts them from the installed binaries when they
# are down; fails naming exactly what to install or start when that is not enough.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do
    port_open "$1" && return 0
    sleep 0.2
  done
  return 1
}

postgres_ok() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h 127.0.0.1 -p 5432
  else
    port_open 5432
  fi
}

redis_ok() {
  if command -v redis-cli >/dev/null; then
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else
    port_open 6379
  fi
}

failed=0

if ! postgres_ok; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    echo "PostgreSQL is down; starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 || true
    for _ in $(seq 1 50); do postgres_ok && break; sleep 0.2; done
  fi
  if ! postgres_ok; then
    cat >&2 <<'MSG'
PostgreSQL is not answering on 127.0.0.1:5432.
  Install it:  apt-get install -y postgresql
  Start it:    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
  The tests connect as user "postgres" without a password (trust auth for 127.0.0.1 in
  pg_hba.conf), or set DATABASE_URL=postgres://user:password@127.0.0.1:5432/console.
MSG
    failed=1
  fi
fi

if ! redis_ok; then
  if command -v redis-server >/dev/null; then
    echo "Redis is down; starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
    wait_port 6379 || true
    for _ in $(seq 1 50); do redis_ok && break; sleep 0.2; done
  fi
  if ! redis_ok; then
    cat >&2 <<'MSG'
Redis is not answering on 127.0.0.1:6379.
  Install it:  apt-get install -y redis-server
  Start it:    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
MSG
    failed=1
  fi
fi

exit "$failed"
