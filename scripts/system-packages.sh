#!/usr/bin/env bash
# The Debian packages advsoup needs, by group: the one list for `make setup`, `make test`
# and scripts/slurm/start.sh.
#
#   scripts/system-packages.sh list GROUP...      print the groups' packages
#   scripts/system-packages.sh install GROUP...   install those missing (as root, else with sudo)
#
# Groups:
#   data   the embedded dataset: the real Fashion-MNIST (MIT), read by `make demo` and the tests
#   slurm  a single-node SLURM with accounting, started by the SLURM tests (scripts/slurm/start.sh)
#   test   everything the test suite needs (installed before pytest starts: no test installs anything):
#          data, slurm, and Debian's chromium, which renders `dvc plots diff`'s page headless
#          (tests/test_dvc_plots.py)
# Nothing is started here: daemons are started by whoever needs them.
set -euo pipefail

packages() {
  case "$1" in
    data) echo "dataset-fashion-mnist" ;;
    slurm) echo "slurmctld slurmd slurm-client munge slurmdbd mariadb-server mariadb-client" ;;
    test) packages data; packages slurm; echo "chromium" ;;
    *) echo "system-packages.sh: unknown group '$1' (data, slurm, test)" >&2; exit 2 ;;
  esac
}

[ $# -ge 2 ] || { echo "usage: $0 list|install GROUP..." >&2; exit 2; }
action="$1"; shift
wanted=()
for g in "$@"; do packages "$g" >/dev/null; read -r -a p <<<"$(packages "$g" | tr "\n" " ")"; wanted+=("${p[@]}"); done

case "$action" in
  list) echo "${wanted[*]}" ;;
  install)
    missing=()
    for p in "${wanted[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && exit 0
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    "${sudo[@]}" apt-get "${opts[@]}" update -qq
    "${sudo[@]}" apt-get "${opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" ;;
  *) echo "usage: $0 list|install GROUP..." >&2; exit 2 ;;
esac
