#!/usr/bin/env bash
# Build the real engines used by the tests and by `uploader engines up`, without Docker:
#   - MinIO            go install github.com/minio/minio@${MINIO_VERSION}         -> $CACHE/bin/minio
#   - Kafka (KRaft)    mvn dependency:copy-dependencies (kafka/pom.xml)  -> $CACHE/kafka/libs/*.jar
#   - FerretDB v1      go build of the wrapper module in ferretdb/      -> $CACHE/bin/ferretdb-wrapper
#
# Cache: ${UPLOADER_ENGINES_CACHE:-$HOME/.cache/imaging-uploader/engines} (outside the repo).
# Idempotent: an engine whose artefact exists (and, for Kafka/FerretDB, whose inputs are unchanged)
# is skipped. Safe to run concurrently (serialised with flock). Exits non-zero on failure.
# Needs: go (>= 1.24), java (>= 17), mvn, network access to the Go module proxy and Maven Central.
# Usage: infra/engines/build.sh [minio|kafka|ferretdb ...]   (default: all three)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${UPLOADER_ENGINES_CACHE:-$HOME/.cache/imaging-uploader/engines}"
# Pinned so every machine builds the same server (the newest commit when this was written).
MINIO_VERSION="${UPLOADER_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

log() { printf '[engines-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"; }

hash_inputs() { (cd "$HERE" && cat "$@") | sha256sum | cut -d' ' -f1; }

go_env() {
  export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOBIN="$CACHE/bin" GOFLAGS="-trimpath"
}

build_minio() {
  local bin="$CACHE/bin/minio"
  if [[ -x "$bin" ]]; then log "minio: up to date ($bin)"; return 0; fi
  # Another (non-flock) build may already be running, e.g. started by hand: wait for it.
  if pgrep -f "go install github.com/minio/minio" >/dev/null 2>&1; then
    log "minio: a 'go install github.com/minio/minio' is already running; waiting for it"
    while pgrep -f "go install github.com/minio/minio" >/dev/null 2>&1; do sleep 5; done
    if [[ -x "$bin" ]]; then log "minio: built by the other process ($bin)"; return 0; fi
    log "minio: the other build finished without producing $bin; building here"
  fi
  need go "https://go.dev/dl/"
  go_env
  log "minio: go install github.com/minio/minio@${MINIO_VERSION} (cold build: several minutes on 2 cores)"
  local t0=$SECONDS
  go install github.com/minio/minio@${MINIO_VERSION}
  [[ -x "$bin" ]] || die "minio: go install finished but $bin is missing"
  log "minio: built $bin in $((SECONDS - t0))s"
}

build_kafka() {
  local libs="$CACHE/kafka/libs" stamp="$CACHE/kafka/.inputs.sha256" want
  want="$(hash_inputs kafka/pom.xml)"
  if compgen -G "$libs/kafka_2.13-*.jar" >/dev/null && [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    log "kafka: up to date ($libs)"; return 0
  fi
  need java "a JDK/JRE >= 17, e.g. apt-get install openjdk-17-jre-headless"
  need mvn "apt-get install maven"
  local major
  major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "${major%%.*}" -ge 17 ]] 2>/dev/null || die "kafka: Kafka 4.x needs Java >= 17, found '${major:-unknown}'"
  log "kafka: mvn dependency:copy-dependencies ($HERE/kafka/pom.xml) -> $libs"
  local t0=$SECONDS tmp="$CACHE/kafka/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$CACHE/kafka"
  # (the sed only strips the colour escapes Maven 3.8 prints even in batch mode)
  mvn -q -B -Dstyle.color=never -f "$HERE/kafka/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 \
    | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2 \
    || { rm -rf "$tmp"; die "kafka: maven failed"; }
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "kafka: no kafka_2.13 jar fetched"; }
  rm -rf "$libs"
  mv "$tmp" "$libs"
  printf '%s\n' "$want" >"$stamp"
  log "kafka: fetched $(ls "$libs" | wc -l) jars in $((SECONDS - t0))s"
}

build_ferretdb() {
  local bin="$CACHE/bin/ferretdb-wrapper" stamp="$CACHE/bin/.ferretdb-wrapper.sha256" want
  want="$(hash_inputs ferretdb/go.mod ferretdb/go.sum ferretdb/main.go)"
  if [[ -x "$bin" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    log "ferretdb: up to date ($bin)"; return 0
  fi
  need go "https://go.dev/dl/"
  go_env
  log "ferretdb: go build ($HERE/ferretdb, FerretDB v1 embedded, SQLite backend) -> $bin"
  local t0=$SECONDS
  (cd "$HERE/ferretdb" && go build -o "$bin.tmp.$$" .) || { rm -f "$bin.tmp.$$"; die "ferretdb: go build failed"; }
  mv -f "$bin.tmp.$$" "$bin"
  printf '%s\n' "$want" >"$stamp"
  log "ferretdb: built $bin in $((SECONDS - t0))s"
}

main() {
  local targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || targets=(minio kafka ferretdb)
  mkdir -p "$CACHE/bin"
  log "cache: $CACHE"
  exec 9>"$CACHE/.build.lock"
  if ! flock -n 9; then
    log "another build.sh holds $CACHE/.build.lock; waiting"
    flock 9
  fi
  local t
  for t in "${targets[@]}"; do
    case "$t" in
      minio) build_minio ;;
      kafka) build_kafka ;;
      ferretdb) build_ferretdb ;;
      *) die "unknown engine '$t' (expected minio, kafka or ferretdb)" ;;
    esac
  done
  log "done"
}

main "$@"
