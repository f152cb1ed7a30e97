#!/bin/sh
# PID 1 of a memtrace lab guest. The kernel runs it from the host's root file system (shared
# read-only over 9p); the host prepared a job directory, shared as tag "memtrace-job", with
#   cmd.sh   the command to run (already shell-quoted by the host)
#   shares   lines "TAG MODE PATH": host directories to mount at the same path in the guest
# and collects stdout, stderr and rc from it. Everything goes wrong loudly on the console
# (the host shows its tail), and the guest always powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "memtrace-lab: $*" > /dev/console; }
poweroff_now() { sync; echo o > /proc/sysrq-trigger; sleep 60; }
mounted() { grep -q " $1 " /proc/mounts; }
ninep() { mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$2" "$1" "$3"; }

mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/memtrace-job
if ! ninep memtrace-job rw /run/memtrace-job; then
    say "cannot mount the job share; is the host's 9p share missing?"
    poweroff_now
fi
job=/run/memtrace-job

# The root is read-only: writable scratch space, as on a normal system.
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /tmp/home
mounted /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mounted /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mounted /dev/pts || { mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; }
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null

# Host directories hidden by the tmpfs above (or wanted writable) come back at their own path.
while read -r tag mode path; do
    [ -n "$tag" ] || continue
    mkdir -p "$path" 2>/dev/null
    ninep "$tag" "$mode" "$path" || say "cannot mount share $tag at $path"
done < "$job/shares"

hostname memtrace-lab
ip link set lo up 2>/dev/null
say "running the command"
sh "$job/cmd.sh" > "$job/stdout" 2> "$job/stderr" < /dev/null
echo $? > "$job/rc.tmp" && mv "$job/rc.tmp" "$job/rc"
say "command finished"
poweroff_now
