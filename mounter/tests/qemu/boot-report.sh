#!/bin/sh
# Runs inside a booted test image (imgmount-boot-report.service) and reports on the second
# serial port, one "@@ key=value" line per fact, for the host side (mounter/tests/qemu).
# What to do is chosen on the kernel command line: imgmount_test.actions=a,b,c
# (write-state, check-state, write-usr, store, enable-verity, stats, tamper-read) and imgmount_test.end=
# poweroff|reboot|stay.

out=/dev/ttyS1
say() { printf '@@ %s\n' "$*" > "$out"; }

arg() { sed -n "s/.*imgmount_test\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
has() { case ",$(arg actions)," in *",$1,"*) return 0 ;; esac; return 1; }

say "start"
say "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
# The filesystem types of the mounts stacked at / (mountinfo: field 5 the mount point,
# the type after " - ").
say "root_types=$(awk '$5 == "/" { for (i = 7; $i != "-"; i++) {}; printf "%s%s", sep, $(i+1); sep = "," }' /proc/self/mountinfo)"
say "root_source=$(awk '$5 == "/" && $0 ~ / - fuse.imgmount / { for (i = 7; $i != "-"; i++) {}; print $(i+2) }' /proc/self/mountinfo)"
# Under a transient root the image itself is also at /run/imgmount/image.
say "image_view=$(awk '$5 == "/run/imgmount/image" { for (i = 7; $i != "-"; i++) {}; print $(i+1) " " $(i+2) }' /proc/self/mountinfo)"
say "etc_type=$(awk '$5 == "/etc" { for (i = 7; $i != "-"; i++) {}; t = $(i+1) } END { print t }' /proc/self/mountinfo)"
say "var_source=$(awk '$5 == "/var" { r = $4 } END { print r }' /proc/self/mountinfo)"

# The daemon serving /: argv[0], OOM score, cgroup, root directory.
for p in /proc/[0-9]*; do
	if [ "$(tr '\0' '\n' < "$p/cmdline" 2>/dev/null | head -n 1)" = "@imgmount" ]; then
		say "daemon_pid=${p#/proc/}"
		say "daemon_oom=$(cat "$p/oom_score_adj")"
		say "daemon_cgroup=$(cat "$p/cgroup")"
		say "daemon_root=$(readlink "$p/root")"
	fi
done

state=$(systemctl is-system-running --wait)
say "running=$state"
say "failed=$(systemctl list-units --failed --plain --no-legend | awk '{ printf "%s%s", sep, $1; sep = "," }')"
for u in $(systemctl list-units --failed --plain --no-legend | awk '{ print $1 }'); do
	systemctl status --no-pager --lines=20 "$u" > /dev/ttyS0 2>&1
done

blob=/usr/share/imgmount-test/blob
say "blob_sha256=$(sha256sum < "$blob" | cut -d' ' -f1)"

# What earlier boots left, before this one writes anything.
if has check-state; then
	say "etc_state=$(cat /etc/imgmount-test 2>&1)"
	say "var_state=$(cat /var/lib/imgmount-test/state 2>&1)"
fi
if has write-state; then
	echo "etc-$(arg token)" > /etc/imgmount-test
	mkdir -p /var/lib/imgmount-test
	echo "var-$(arg token)" > /var/lib/imgmount-test/state
	sync
	say "wrote_state=$(arg token)"
fi
if has write-usr; then
	if echo x > /usr/imgmount-test-transient 2>/dev/null; then
		say "usr_write=ok"
	else
		say "usr_write=refused"
	fi
	say "usr_write_upper=$(ls /run/imgmount/transient-root/upper/usr/imgmount-test-transient 2>&1)"
fi
if has stats; then
	say "stats=$(imgmount stats --json / "$blob" /usr/bin/sh | tr -d ' \n')"
fi
if has store; then
	say "store_images=$(imgmount images 2>&1 | tr '\n' ' ')"
fi
if has enable-verity; then
	imgmount enable-verity > /dev/ttyS0 2>&1
	say "enable_verity=$?"
	sync
fi
if has tamper-read; then
	# Block 100 of the blob was changed on the disk between boots: reading it must fail,
	# the blocks before it must read right.
	if dd if="$blob" of=/dev/null bs=4096 skip=100 count=1 2> /tmp/dd.err; then
		say "tampered_read=ok"
	else
		say "tampered_read=failed:$(tr '\n' ' ' < /tmp/dd.err)"
	fi
	say "head_sha256=$(head -c 409600 "$blob" | sha256sum | cut -d' ' -f1)"
fi
if has version; then
	say "version=$(cat /usr/share/imgmount-test/version 2>&1)"
	say "etc_version=$(cat /etc/imgmount-test-version 2>&1)"
fi
if has status; then
	say "status=$(imgmount status --json 2>&1 | tr -d '\n')"
	imgmount status > /dev/ttyS0 2>&1
fi
if has deploy; then
	sig=$(arg signature)
	imgmount deploy "$(arg deploy)" --tries "$(arg tries)" ${sig:+--signature "$sig"} > /dev/ttyS0 2>&1
	say "deploy=$?"
	sync
fi
if has rollback; then
	imgmount rollback > /dev/ttyS0 2>&1
	say "rollback=$?"
	sync
fi
if has status && { has deploy || has rollback; }; then
	say "status_after=$(imgmount status --json 2>&1 | tr -d '\n')"
fi
say "done"
if has deploy-loop; then
	# Deploys the images named by imgmount_test.loop= in turn until the machine is killed.
	say "deploy_loop=started"
	while :; do
		for t in $(arg loop | tr ',' ' '); do
			imgmount deploy "$t" > /dev/ttyS0 2>&1
		done
	done
fi

case "$(arg end)" in
poweroff) systemctl poweroff ;;
reboot) systemctl reboot ;;
esac
