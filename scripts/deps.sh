#!/usr/bin/env bash
# Installs, through apt and only when missing, the system tools vm0fs's scripts use:
# fuse3 (fusermount3), rsync, attr (getfattr), curl, util-linux (findmnt), tar, procps.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need fusermount3 fuse3
need rsync rsync
need getfattr attr
need curl curl
need findmnt util-linux
need tar tar
need pgrep procps
need python3 python3

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi
