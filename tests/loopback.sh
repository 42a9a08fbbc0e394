#!/bin/sh
# Run a command inside a fresh network namespace that holds only loopback (127.0.0.1).
#
# Ray advertises the machine's non-loopback interface address even when told
# 127.0.0.1; in a namespace with nothing but `lo` it binds and advertises 127.0.0.1,
# so every network test (the Ray cluster, the real backends) stays on this machine.
# Root uses `unshare --net`; anyone else an unprivileged user namespace (`-r`).
set -eu
inner='ip link set lo up && exec "$@"'
if unshare --net true 2>/dev/null; then
    exec unshare --net -- sh -c "$inner" sh "$@"
elif unshare --user --map-root-user --net true 2>/dev/null; then
    exec unshare --user --map-root-user --net -- sh -c "$inner" sh "$@"
fi
echo "error: cannot create a loopback-only network namespace (unshare --net); the tests need one" >&2
exit 2
