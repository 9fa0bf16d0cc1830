#!/usr/bin/env bash
# Put edged's systemd unit and example config in place (what `make install-service` runs).
#
#   EDGED_BIN   the installed edged the unit starts (default /opt/edged/venv/bin/edged)
#   DESTDIR     staging root prepended to every path written (packaging, tests); default none
#   UNITDIR     where the unit goes (default /etc/systemd/system)
#   SYSCONFDIR  config root: the config goes to $SYSCONFDIR/edged/edged.toml (default /etc)
#
# The unit's ExecStart is rewritten to EDGED_BIN and the config path; the config is copied
# only when absent, so an operator's edited edged.toml is never overwritten. The installed
# unit is checked with `systemd-analyze verify` when systemd-analyze is present and
# EDGED_BIN exists on this host (a DESTDIR staging tree for another machine is not checked).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)/systemd
bin=${EDGED_BIN:-/opt/edged/venv/bin/edged}
destdir=${DESTDIR:-}
unitdir=${UNITDIR:-/etc/systemd/system}
confdir=${SYSCONFDIR:-/etc}/edged
shipped_exec="/opt/edged/venv/bin/edged run --config /etc/edged/edged.toml"
exec_line="$bin run --config $confdir/edged.toml"

die() {
    echo "install-service: $*" >&2
    exit 2
}

case $bin in
    /*) ;;
    *) die "EDGED_BIN must be an absolute path (got '$bin')" ;;
esac
[ -x "$destdir$bin" ] || [ -x "$bin" ] ||
    die "no edged at $bin: install it first (python3 -m venv /opt/edged/venv && /opt/edged/venv/bin/pip install <wheel or git URL>) or pass EDGED_BIN=/path/to/bin/edged"
grep -qxF "ExecStart=$shipped_exec" "$src/edged.service" ||
    die "$src/edged.service has no 'ExecStart=$shipped_exec' line to rewrite; update tools/install-service.sh"

unit=$destdir$unitdir/edged.service
conf=$destdir$confdir/edged.toml
install -d -m 0755 "$destdir$unitdir" "$destdir$confdir"
# Written beside the target, then renamed: a half-written unit is never in place.
sed "s|^ExecStart=$shipped_exec\$|ExecStart=$exec_line|" "$src/edged.service" >"$unit.tmp"
chmod 0644 "$unit.tmp"
mv -f "$unit.tmp" "$unit"
if [ -e "$conf" ]; then
    echo "kept $conf (already present; the example is $src/edged.toml)"
else
    install -m 0644 "$src/edged.toml" "$conf"
    echo "installed $conf"
fi
echo "installed $unit (ExecStart=$exec_line)"

if command -v systemd-analyze >/dev/null && [ -x "$bin" ]; then
    systemd-analyze verify "$unit" || die "systemd-analyze verify $unit failed (see above)"
fi
if [ -z "$destdir" ]; then
    echo "next: systemctl daemon-reload && systemctl enable --now edged"
fi
