#!/usr/bin/env bash
# hotprobe run against bpftrace on real programs: the counts of libc's malloc, free, read,
# openat, strlen and memcpy, "hotprobe / bpftrace" per cell. Both trace a private copy of
# libc (LD_LIBRARY_PATH), so that bpftrace's kernel uprobes reach the command only, not
# every process of the machine. Run as root, with bpftrace installed.
# usage: scripts/compare-libc-counts.sh [HOTPROBE_BINARY]
set -euo pipefail
hp=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/release/bin/hotprobe}
d=$(mktemp -d /tmp/hp-cmpXXXX)
trap 'rm -rf "$d"' EXIT
chmod 755 "$d"
mkdir "$d/lib"
cp "$(ldd /bin/true | awk '/libc.so.6/ {print $3}')" "$d/lib/"
libc=$d/lib/libc.so.6
python3 -c "import sqlite3; c=sqlite3.connect('$d/s.db'); c.execute('create table t(x)'); c.executemany('insert into t values(?)', [(i,) for i in range(1000)]); c.commit()"
seq 1 100000 > "$d/data.txt"
cmds=(
  "/usr/bin/python3 -c print(sum(range(1000)))"
  "/usr/bin/perl -e print(join(q(,),sort(map{\$_*3}1..500)))"
  "/usr/bin/sqlite3 $d/s.db select(count(*))from(t)"
  "/usr/bin/gzip -f -k $d/data.txt"
  "/bin/ls -l /usr/lib"
)
fns=(malloc free read openat strlen memcpy)
printf "| program | %s |\n" "$(IFS='|'; echo "${fns[*]}" | sed 's/|/ | /g')"
for c in "${cmds[@]}"; do
  s_bt="" s_hp=""
  for f in "${fns[@]}"; do
    s_bt+="uprobe:$libc:$f /pid == cpid/ { @$f = count(); } "
    s_hp+="uprobe:libc:$f { @$f = count(); } "
  done
  rm -f "$d/data.txt.gz"  # gzip opens once more when its output is there
  bt=$(cd "$d" && LD_LIBRARY_PATH=$d/lib bpftrace -e "$s_bt" -c "$c" 2>/dev/null | grep -E '^@' || true)
  read -ra argv <<< "$c"
  rm -f "$d/data.txt.gz"
  hpo=$(cd "$d" && LD_LIBRARY_PATH=$d/lib "$hp" run -e "$s_hp" -- "${argv[@]}" 2>/dev/null | grep -E '^@' || true)
  row="| ${c%% *} |"
  for f in "${fns[@]}"; do
    b=$(echo "$bt" | awk -v k="@$f:" '$1==k{print $2}')
    h=$(echo "$hpo" | awk -v k="@$f:" '$1==k{print $2}')
    row+=" ${h:-0} / ${b:-0} |"
  done
  echo "$row"
done
