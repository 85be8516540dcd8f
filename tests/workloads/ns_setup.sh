#!/bin/sh
# Setup of the mini-container of tests/integration/test_ns_minicontainer.py, run as pid 1 of
#   unshare --pid --fork --mount-proc --uts --ipc --net --mount sh ns_setup.sh STATE COUNTER [fuse]
# then replaced (exec) by the workload COUNTER STATE.  Every address is private and stays
# inside the new net namespace (a veth pair whose both ends live there).
set -e
state=$1 counter=$2 extra=$3
here=$(dirname "$0")
hostname alpha
domainname lab
ip link set lo up
ip link add ve0 type veth peer name ve1
ip link set ve0 address 02:00:00:c0:00:01 mtu 1400
ip link set ve1 address 02:00:00:c0:00:02
ip addr add 10.200.0.1/24 dev ve0
ip addr add fd00:200::1/64 dev ve0 nodad
ip addr add 10.200.0.2/24 dev ve1
ip link set ve0 up
ip link set ve1 up
ip route add 10.201.0.0/16 via 10.200.0.2 dev ve0
ip route add 10.202.0.0/16 via 10.200.0.2 dev ve0 table 100
ip rule add from 10.200.0.0/24 table 100 priority 1000
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 1 > /proc/sys/net/ipv4/conf/ve0/rp_filter
nft add table inet nstest
nft add chain inet nstest input '{ type filter hook input priority 0; policy accept; }'
nft add rule inet nstest input tcp dport 9999 counter drop
# a tmpfs on /mnt first, so that nothing is created on the host's filesystem
mount -t tmpfs -o size=1m,mode=755 mnt /mnt
mkdir /mnt/scratch
mount -t tmpfs -o size=64m,mode=751 scratch /mnt/scratch
dd if=/dev/urandom of=/mnt/scratch/data bs=1M count=10 status=none
ln -s data /mnt/scratch/link
mkdir /mnt/scratch/mq
mount -t mqueue mqueue /mnt/scratch/mq
/usr/bin/python3 "$here/ns_mq.py" create ns-test
if [ "$extra" = fuse ]; then
	mkdir /mnt/scratch/fuse
	/usr/bin/python3 "$here/ns_mq.py" fuse /mnt/scratch/fuse
fi
exec "$counter" "$state" </dev/null >/dev/null 2>&1
