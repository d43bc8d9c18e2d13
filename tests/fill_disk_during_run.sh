# Runs a launcher on a fresh 64 MB tmpfs and fills that disk once round 2 is
# reported (its checkpoint is then saved); copies the run folder out after.
# Usage (in a user and mount namespace): bash fill_disk_during_run.sh DISK OUT LAUNCHER ARGS...
set -u
DISK="$1"; OUT="$2"; shift 2
mount -t tmpfs -o size=64m tmpfs "$DISK" || exit 90
"$@" --root_dir="$DISK" 2>"$OUT/stderr" | while IFS= read -r line; do
  printf '%s\n' "$line"
  case "$line" in "round 2/"*) head -c 200m /dev/zero > "$DISK/filler" 2>/dev/null ;; esac
done
echo "launcher exit ${PIPESTATUS[0]}"
rm -f "$DISK/filler"
cp -a "$DISK/e" "$OUT/e"
