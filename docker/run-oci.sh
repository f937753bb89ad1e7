#!/usr/bin/env bash
# Run an image like `podman run --rm --network none` where only buildah is installed (it builds images
# but cannot run one with a read-only root file system): the image's file system from `buildah mount`,
# an OCI runtime bundle from `runc spec` with the image's configuration, `runc run`. Used by
# docker/test-image.sh (ENGINE=buildah); needs buildah, runc and python3; run as root.
#
# Usage: run-oci.sh [--read-only] [--tmpfs DIR] [--user UID[:GID]] [-v HOST:CONTAINER] [-e KEY=VALUE]
#                   [--entrypoint PROGRAM] IMAGE [ARG ...]
set -euo pipefail

read_only=false user="" entrypoint=""
tmpfs=() binds=() envs=()
while [ $# -gt 0 ]; do
    case $1 in
        --read-only) read_only=true; shift ;;
        --tmpfs) tmpfs+=("$2"); shift 2 ;;
        --user) user=$2; shift 2 ;;
        -v) binds+=("$2"); shift 2 ;;
        -e) envs+=("$2"); shift 2 ;;
        --entrypoint) entrypoint=$2; shift 2 ;;
        *) break ;;
    esac
done
image=$1
shift

bundle=$(mktemp -d)
ctr=$(buildah from --pull-never -q "$image")
cleanup() {
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$bundle"
}
trap cleanup EXIT
root=$(buildah mount "$ctr")
buildah inspect --type image "$image" >"$bundle/image.json"
(cd "$bundle" && runc spec)

python3 - "$bundle" "$root" "$read_only" "$user" "$entrypoint" "$#" "$@" \
    -- "${tmpfs[@]+"${tmpfs[@]}"}" -- "${binds[@]+"${binds[@]}"}" -- "${envs[@]+"${envs[@]}"}" <<'EOF'
import json, sys

bundle, root, read_only, user, entrypoint, nargs, *rest = sys.argv[1:]
args, rest = rest[:int(nargs)], rest[int(nargs):]
groups, current = [], None
for word in rest:
    if word == "--":
        current = []
        groups.append(current)
    else:
        current.append(word)
tmpfs, binds, envs = groups
image = json.load(open(f"{bundle}/image.json"))["OCIv1"]["config"]
spec = json.load(open(f"{bundle}/config.json"))
command = ([entrypoint] if entrypoint else image.get("Entrypoint") or []) + (args or image.get("Cmd") or [])
uid, _, gid = (user or image.get("User") or "0").partition(":")
env = dict(e.split("=", 1) for e in image.get("Env") or [])
env.update(e.split("=", 1) for e in envs)
spec["root"] = {"path": root, "readonly": read_only == "true"}
spec["process"].update(terminal=False, args=command, cwd=image.get("WorkingDir") or "/",
                       env=[f"{k}={v}" for k, v in env.items()], user={"uid": int(uid), "gid": int(gid or 0)})
spec["hostname"] = "cellflow-rt"
for path in tmpfs:
    spec["mounts"].append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777"]})
for bind in binds:
    source, destination, *mode = bind.split(":")
    spec["mounts"].append({"destination": destination, "type": "bind", "source": source,
                           "options": ["rbind", *(["ro"] if mode == ["ro"] else [])]})
json.dump(spec, open(f"{bundle}/config.json", "w"))
EOF

runc run --bundle "$bundle" "cellflow-rt-check-$$"
