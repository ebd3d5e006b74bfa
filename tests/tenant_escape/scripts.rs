//! The shell scripts the tenants' jobs run: the shared helpers, alice's escape attempts, bob's
//! secret keeper.

/// What the tenants' shell scripts share: one line per attempt, judged by how the command ended.
///
/// - `attempt NAME CMD…`: the escape worked if CMD succeeded (it read, listed, wrote or
///   signalled what it must not).
/// - `http_auth NAME CURL-ARGS…`: a call only the holder of another token may make; blocked
///   means 401 or 403 (a 400 would mean the token passed and only the body was refused).
/// - `http_serve NAME CURL-ARGS…`: a fetch of something the agent must refuse to serve; blocked
///   means an error status, and no answer at all is an error of its own (the agent hung).
pub(super) const SCRIPT_HELPERS: &str = r#"
set -u
clean() { head -c "$1" | tr -c '[:graph:] ' '.'; }
attempt() {
  name=$1; shift
  if "$@" >"$HOME/attempt.out" 2>"$HOME/attempt.err"; then
    echo "ESCAPE $name OK"
    echo "DETAIL $name $(clean 400 <"$HOME/attempt.out")"
  else
    echo "ESCAPE $name BLOCKED: $(clean 160 <"$HOME/attempt.err")"
  fi
}
http_auth() {
  name=$1; shift
  code=$(curl -s -o "$HOME/http.out" -w '%{http_code}' --max-time 10 "$@")
  case "$code" in
    401|403) echo "ESCAPE $name BLOCKED: HTTP $code" ;;
    000) echo "ESCAPE $name ERROR: no answer" ;;
    *) echo "ESCAPE $name OK: HTTP $code"; echo "DETAIL $name $(clean 400 <"$HOME/http.out")" ;;
  esac
}
http_serve() {
  name=$1; shift
  code=$(curl -s -o "$HOME/http.out" -w '%{http_code}' --max-time 10 "$@")
  case "$code" in
    4??|5??) echo "ESCAPE $name BLOCKED: HTTP $code $(clean 200 <"$HOME/http.out")" ;;
    000) echo "ESCAPE $name ERROR: no answer within 10 s" ;;
    *) echo "ESCAPE $name OK: HTTP $code"; echo "DETAIL $name $(clean 400 <"$HOME/http.out")" ;;
  esac
}
# What this account can read of every process's environment (its own, normally): printed, so
# the test sees any secret in it. Sets found_am_token to an AM token found there.
found_am_token=none
scan_environs() {
  for p in /proc/[0-9]*; do
    e=$(tr '\0' ' ' 2>/dev/null <"$p/environ") || continue
    [ -n "$e" ] || continue
    echo "READABLE_ENVIRON $p uid=$(stat -c %u "$p" 2>/dev/null) $e"
    t=$(tr '\0' '\n' 2>/dev/null <"$p/environ" | sed -n 's/^SPINDLE_AM_TOKEN=//p')
    if [ -n "$t" ]; then found_am_token=$t; fi
  done
}
# The command line of every process (readable by all on Linux): printed, so the test sees any
# secret passed as an argument.
scan_cmdlines() {
  for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    [ -n "$c" ] && echo "CMDLINE $p $(printf '%s' "$c" | head -c 600)"
  done
}
# Root processes: their environment, file descriptors, a secret on their command line, signals.
probe_root_processes() {
  for p in "$@"; do
    attempt "environ:$p" cat "/proc/$p/environ"
    attempt "fds:$p" ls "/proc/$p/fd"
    attempt "cwd:$p" ls "/proc/$p/cwd/"
    attempt "secret-on-cmdline:$p" sh -c "tr '\0' '\n' </proc/$p/cmdline | grep -q -x -e '--secret' -e '--secret=.*' -e '--token' -e '--token=.*'"
    attempt "signal:$p" kill -0 "$p"
  done
}
"#;

/// Alice's job: three tasks. 0 tries to read what is not hers and to act as someone else; 1
/// plants symlinks and FIFOs as map output and fetches it from the agent; 2 swaps its own log
/// files for symlinks to the cluster's secrets (the test fetches them through the RM).
pub(super) const ALICE_SCRIPT: &str = r#"
echo "TASK $SPINDLE_TASK_INDEX"
case "$SPINDLE_TASK_INDEX" in
0)
  echo "WHOAMI uid=$(id -u) gid=$(id -g) groups=$(id -G)"
  # The environment: no cluster secret, no AM token in a task.
  attempt env-cluster-secret sh -c 'env | grep -q "^SPINDLE_CLUSTER_SECRET="'
  attempt env-am-token sh -c '[ -n "${SPINDLE_AM_TOKEN:-}" ]'
  env | sed 's/^/ENV /'
  # Walking up from the work dir, and the files of the cluster.
  attempt list-own-app-dir ls ..
  attempt list-apps-dir ls ../..
  attempt list-agent-work-dir ls ../../..
  attempt list-cluster-root ls ../../../..
  attempt cat-around-work-dir sh -c 'cat ../* ../../* ../../../* ../../../../*'
  attempt cat-agent-secret-file cat "$SECRET_FILE"
  ln -s "$SECRET_FILE" "$HOME/secret-symlink"
  attempt cat-secret-through-own-symlink cat "$HOME/secret-symlink"
  attempt hard-link-agent-secret-file ln "$SECRET_FILE" "$HOME/secret-hardlink"
  attempt rm-config cat "$RM_DIR/rm.toml"
  attempt rm-db cat "$RM_DIR/rm.db"
  attempt rm-db-wal cat "$RM_DIR/rm.db-wal"
  for w in $AGENT_WORK_DIRS; do
    attempt "list-work-dir:$w" ls "$w"
    attempt "list-work-dir-apps:$w" ls "$w/apps"
    attempt "list-work-dir-shuffle:$w" ls "$w/shuffle"
    attempt "write-work-dir-shuffle:$w" mkdir "$w/shuffle/planted-by-alice"
    attempt "node-credential:$w" cat "$w/node-credential.json"
  done
  # The agents and the RM as processes (found as any tenant would, and as the test says).
  agents=$(pgrep -u 0 -f node-agent | tr '\n' ' ')
  [ -n "$agents" ] || echo "ERROR pgrep found no node agent"
  probe_root_processes $agents $AGENT_PIDS $RM_PID
  # Bob's running job: its processes...
  bpids=$(pgrep -u "$B_ACCOUNT" | tr '\n' ' ')
  [ -n "$bpids" ] || echo "ERROR no process of $B_ACCOUNT found"
  for p in $bpids; do
    attempt "bob-environ:$p" cat "/proc/$p/environ"
    attempt "bob-stdout-fd:$p" cat "/proc/$p/fd/1"
    attempt "bob-cwd:$p" ls "/proc/$p/cwd/"
    attempt "bob-signal:$p" kill -0 "$p"
  done
  # ...its files...
  attempt bob-list-task-dir ls "$B_TASK_DIR"
  attempt bob-secret-file cat "$B_TASK_DIR/secret.txt"
  attempt bob-stdout cat "$B_TASK_DIR/stdout"
  attempt bob-list-tmp ls "$B_TASK_DIR/tmp"
  attempt bob-write-task-dir touch "$B_TASK_DIR/planted-by-alice"
  attempt bob-am-job-spec cat "$B_AM_DIR/job-spec.json"
  attempt bob-am-stderr cat "$B_AM_DIR/stderr"
  attempt bob-list-app-dir ls "$(dirname "$B_TASK_DIR")"
  attempt bob-write-app-dir mkdir "$(dirname "$B_TASK_DIR")/planted-by-alice"
  for d in $B_SHUFFLE_DIRS; do
    attempt "bob-list-shuffle:$d" ls "$d"
    attempt "bob-write-shuffle:$d" touch "$d/m_9.index"
  done
  # ...and its containers and map output through the agent's API, with the tokens alice has.
  scan_environs
  echo "NOTE an AM token readable by this account: $([ "$found_am_token" = none ] && echo no || echo yes)"
  agent=$B_TASK_AGENT
  for kind in shuffle am; do
    if [ $kind = shuffle ]; then token=$SPINDLE_SHUFFLE_TOKEN; else token=$found_am_token; fi
    http_auth "agent-bob-logs-with-$kind-token" -H "Authorization: Bearer $token" "$agent/v1/containers/$B_TASK/logs/stdout"
    http_auth "agent-bob-status-with-$kind-token" -H "Authorization: Bearer $token" "$agent/v1/containers/$B_TASK"
    http_auth "agent-kill-bob-with-$kind-token" -X DELETE -H "Authorization: Bearer $token" "$agent/v1/containers/$B_TASK"
    http_auth "agent-list-containers-with-$kind-token" -H "Authorization: Bearer $token" "$agent/v1/containers"
    http_auth "agent-bob-map-output-with-$kind-token" -H "Authorization: Bearer $token" "$agent/v1/shuffle/$B_APP/m_0/0"
  done
  # Tokens at the RM: made up, replayed (this app's own AM token), or of the wrong kind.
  rm_url=${SPINDLE_RM%%,*}
  finish_bob='{"app_id":"'$B_APP'","attempt":1,"final_status":"FAILED","diagnostics":"finished by another tenant"}'
  for token in made-up-token "${SPINDLE_AM_TOKEN:-}" "$found_am_token" "$SPINDLE_SHUFFLE_TOKEN"; do
    label=$(printf '%s' "$token" | head -c 8)
    http_auth "rm-finish-bob-with:$label" -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$finish_bob" "$rm_url/v1/internal/am/finish"
  done
  for token in made-up-token "$found_am_token" "$SPINDLE_SHUFFLE_TOKEN"; do
    label=$(printf '%s' "$token" | head -c 8)
    http_auth "rm-node-heartbeat-with:$label" -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{}' "$rm_url/v1/internal/nodes/heartbeat"
    http_auth "rm-node-register-with:$label" -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{}' "$rm_url/v1/internal/nodes/register"
    http_auth "rm-bob-app-with:$label" -H "Authorization: Bearer $token" "$rm_url/v1/apps/$B_APP"
    http_auth "rm-bob-logs-with:$label" -H "Authorization: Bearer $token" "$rm_url/v1/containers/$B_TASK/logs/stdout"
    http_auth "rm-kill-bob-with:$label" -X DELETE -H "Authorization: Bearer $token" "$rm_url/v1/apps/$B_APP"
    http_auth "rm-metrics-with:$label" -H "Authorization: Bearer $token" "$rm_url/metrics"
  done
  # Checkpoint metadata for the next apps (bob's stream job among them) in the shared dir.
  seq=$(echo "${SPINDLE_APP_ID##*_}" | sed 's/^0*//')
  prefix=${SPINDLE_APP_ID%_*}
  for k in 1 2 3; do
    id=$(printf '%s_%04d' "$prefix" $((seq + k)))
    d="$CKPT_DIR/$id/chk-99"
    if mkdir -p "$d" && chmod 755 "$CKPT_DIR/$id" "$d" \
      && printf '%s' '{"id":99,"completed_at_ms":1,"duration_ms":1,"size_bytes":0,"parallelism":{},"stages":{},"commits":[],"last":true}' >"$d/_metadata.json" \
      && chmod 644 "$d/_metadata.json"; then
      echo "PLANTED $id"
    else
      echo "ERROR could not plant $d"
    fi
  done
  scan_cmdlines
  ;;
1)
  cd "$SPINDLE_SHUFFLE_DIR" || { echo "ERROR no shuffle dir"; exit 0; }
  index='\0\0\0\0\0\0\0\0\100\0\0\0\0\0\0\0'
  ln -s "$SECRET_FILE" m_0.index
  printf "$index" >m_1.index; ln -s "$SECRET_FILE" m_1.data
  mkfifo m_2.index
  printf "$index" >m_3.index; mkfifo m_3.data
  printf "$index" >m_4.index; ln -s "$B_TASK_DIR/secret.txt" m_4.data
  printf "$index" >m_5.index; ln -s "$RM_DIR/rm.toml" m_5.data
  for output in m_0 m_1 m_2 m_3 m_4 m_5; do
    http_serve "shuffle-$output" -H "Authorization: Bearer $SPINDLE_SHUFFLE_TOKEN" "http://$SPINDLE_NODE_ID/v1/shuffle/$SPINDLE_APP_ID/$output/0"
  done
  ;;
2)
  echo "this line is in the stdout file that is swapped for a symlink"
  rm -f stdout stderr
  ln -s "$SECRET_FILE" stdout
  ln -s "$RM_DIR/rm.toml" stderr
  exit 0
  ;;
esac
echo END
"#;

/// Bob's job: keeps a secret in its environment, its work dir and its stdout while alice
/// tries; ends when the test says (or after 50 s).
pub(super) const BOB_SCRIPT: &str = r#"
printf '%s\n' "$B_SECRET" >secret.txt
echo "bob: $B_SECRET"
i=0
while [ ! -e "$RELEASE" ] && [ $i -lt 250 ]; do sleep 0.2; i=$((i + 1)); done
echo "bob: done"
"#;
