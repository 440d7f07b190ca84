# Shared helpers of scripts/services.sh: logging and errors, process and port checks, Debian
# packages, the state dir and its lock. Sourced by scripts/services.sh (not run on its own); uses its
# settings (STATE, HOST).
# shellcheck shell=bash

log() { printf '[services] %s\n' "$*" >&2; }

# die WHAT [HOW-TO-FIX...]
die() {
  printf '[services] ERROR: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '[services]   fix: %s\n' "$line" >&2; done
  exit 1
}

show_tail() { # file [lines]
  if [[ -s $1 ]]; then
    printf '[services] ---- last %s lines of %s ----\n' "${2:-40}" "$1" >&2
    tail -n "${2:-40}" "$1" >&2 || true
    printf '[services] ----\n' >&2
  fi
}

is_root() { [[ $EUID -eq 0 ]]; }

# true if something accepts TCP connections on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# proc_cmdline_has PID NEEDLE... : PID is alive and its command line contains every NEEDLE.
# Guards against PID files that outlived a reboot and now name an unrelated process.
proc_cmdline_has() {
  local pid=$1 cmd needle
  shift
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || return 1
  [[ -n $cmd ]] || return 1
  for needle in "$@"; do [[ $cmd == *"$needle"* ]] || return 1; done
}

read_pid() { [[ -r $1 ]] && head -n 1 "$1" 2>/dev/null | tr -dc '0-9' || true; }

# wait_pid_exit PID SECONDS
wait_pid_exit() {
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    [[ -e /proc/$pid ]] || return 0
    sleep 0.1
  done
  return 1
}

APT_UPDATED=0
# ensure_packages PKG... : apt-get install the packages that are not installed yet
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null ||
    die "packages missing: ${missing[*]} (and no apt-get on this machine)" \
      "install them with your package manager, then re-run"
  local sudo=()
  if ! is_root; then
    command -v sudo >/dev/null ||
      die "packages missing: ${missing[*]}; installing them needs root" \
        "run as root, or: apt-get install -y ${missing[*]}"
    sudo=(sudo)
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ((!APT_UPDATED)); then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq ||
      die "apt-get update failed" "check that the Debian mirror is reachable, then re-run"
    APT_UPDATED=1
  fi
  ensure_state_dir
  if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" \
    >>"$STATE/apt.log" 2>&1; then
    show_tail "$STATE/apt.log" 25
    die "apt-get install ${missing[*]} failed (log: $STATE/apt.log)" "run: apt-get update && apt-get install -y ${missing[*]}"
  fi
}

ensure_state_dir() {
  if [[ ! -d $STATE ]]; then
    mkdir -p "$STATE" || die "cannot create state dir $STATE" "set SWITCHYARD_SERVICES_DIR to a writable directory"
    chmod 755 "$STATE"
  fi
}

# Serialise start/stop of concurrent invocations (e.g. two test runs starting at once).
# Every long-running server is launched with 9>&- so it does not inherit (and hold) the lock.
take_lock() {
  ensure_state_dir
  if command -v flock >/dev/null; then
    exec 9>"$STATE/.lock"
    flock -w 600 9 || die "another process has held $STATE/.lock for 10 minutes" \
      "find it with: fuser -v $STATE/.lock (or: ps aux | grep services.sh); wait for it or stop it"
  fi
}
