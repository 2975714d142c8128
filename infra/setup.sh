#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: uv, system packages, Python deps.
#   infra/setup.sh run    what `make run` needs
#   infra/setup.sh test   plus what the test suite needs (browser, OCR, kcat, engine toolchains)
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-run}

run_pkgs=(libmagic1 tesseract-ocr fonts-dejavu-core)
test_pkgs=(chromium kcat openjdk-17-jre-headless maven golang-go clamav-daemon unzip)

missing=()
want=("${run_pkgs[@]}")
[ "$purpose" = test ] && want+=("${test_pkgs[@]}")
for pkg in "${want[@]}"; do
  # The machine may carry its own Java/Maven/Go outside Debian's packages; those count.
  case $pkg in
    openjdk-17-jre-headless) command -v java >/dev/null && continue ;;
    maven) command -v mvn >/dev/null && continue ;;
    golang-go) command -v go >/dev/null && continue ;;
  esac
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv"
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet
