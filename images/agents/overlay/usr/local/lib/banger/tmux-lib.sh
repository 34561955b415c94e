# Shared by tmux-save and tmux-restore (sourced, bash): where the state lives, how tmux is reached,
# the state file's format and its limits. docs/tmux.md describes all of it.
#
# Environment (the guest sets none of these; tests point them at a private server and state file):
#   BANGER_TMUX_SOCKET  tmux server socket (tmux -S). Unset: tmux's own choice, the default server
#                       /tmp/tmux-<uid>/default (the hooks' run-shell jobs get no $TMUX: a server on
#                       another socket saves the default server's sessions, never its own).
#   BANGER_TMUX_CONF    config file of a server that tmux-restore starts (tmux -f). Unset: /etc/tmux.conf.
#   BANGER_TMUX_STATE   state file. Unset: /root/.local/state/banger/tmux-sessions (the work disk).
#   BANGER_TMUX_RUNDIR  where tmux-restore marks this boot's restore as done. Unset: /run/banger
#                       (a tmpfs: the mark goes with every shutdown).

BANGER_STATE_FILE=${BANGER_TMUX_STATE:-/root/.local/state/banger/tmux-sessions}
BANGER_STATE_DIR=$(dirname -- "$BANGER_STATE_FILE")
BANGER_STATE_LOCK="$BANGER_STATE_DIR/.tmux-sessions.lock"
# Saves write only while this exists: after this boot's restore (which would otherwise read a state
# a save had already replaced) and until the save at shutdown (tmux-save --stop).
BANGER_RESTORED_MARK="${BANGER_TMUX_RUNDIR:-/run/banger}/tmux-restored"
# Left by a hook that found the lock taken: the holder saves again after letting go (tmux-save).
BANGER_STATE_DIRTY="$BANGER_STATE_DIR/.tmux-sessions.dirty"

# Format version and the limits both sides enforce: a state file is input at boot and stays small.
BANGER_STATE_HEADER=$'banger-tmux-sessions\t1'
BANGER_MAX_SESSIONS=64
BANGER_MAX_WINDOWS=32
BANGER_MAX_NAME=256
BANGER_MAX_DIR=4096
BANGER_MAX_COMMAND=8192
BANGER_MAX_STATE_BYTES=$((1024 * 1024))

# Every byte tmux could hand us that would break a line/tab-separated record (and that no sane name,
# path or one-line command needs): C0 controls (tab and newline among them) and DEL.
BANGER_CONTROL=$'\001'-$'\037'$'\177'

# -u: a client without a UTF-8 locale (systemd gives services none) gets every non-ASCII byte, and
# even a tab, of its output replaced by '_'.
banger_tmux_args=(-u)
[[ -n ${BANGER_TMUX_SOCKET:-} ]] && banger_tmux_args+=(-S "$BANGER_TMUX_SOCKET")
[[ -n ${BANGER_TMUX_CONF:-} ]] && banger_tmux_args+=(-f "$BANGER_TMUX_CONF")

# tmux without the lock's descriptor: a server this starts must not hold the lock forever.
t() { tmux "${banger_tmux_args[@]}" "$@" 9>&-; }

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# One tmux argument carrying data. tmux ends a command at an argument ending in ';' (and turns a
# final '\;' into ';'), so a final ';' is written '\;'.
targ() {
  local s=$1
  [[ $s == *';' ]] && s="${s%;}\\;"
  printf '%s' "$s"
}

# The same for arguments tmux expands as formats (-c, -n): '#' is written '##'.
tfmt() { targ "${1//#/##}"; }

has_control() { [[ $1 == *[$BANGER_CONTROL]* ]]; }

# Splits a tab-separated line into the array `fields` (empty fields kept, unlike read -a).
split_tabs() {
  local rest=$1
  fields=()
  while [[ $rest == *$'\t'* ]]; do
    fields+=("${rest%%$'\t'*}")
    rest=${rest#*$'\t'}
  done
  fields+=("$rest")
}

# Takes the lock shared by saves and restores (descriptor 9), waiting at most $1 seconds. Only the
# restore (with $2 = create) makes the state directory: a save never brings back a directory that
# was removed, say while a hook's save was still on its way.
take_lock() {
  if [[ ${2:-} == create ]]; then
    mkdir -p -m 0700 -- "$BANGER_STATE_DIR" 2>/dev/null || {
      log "cannot create $BANGER_STATE_DIR"
      return 1
    }
  fi
  [[ -d $BANGER_STATE_DIR ]] || return 1
  { exec 9>>"$BANGER_STATE_LOCK"; } 2>/dev/null || return 1
  if (($1 == 0)); then flock -n 9; else flock -w "$1" 9; fi
}
