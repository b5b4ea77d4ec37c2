# Sourced by the install-*.sh scripts: apt as root (through sudo when not root),
# quietly, waiting for another apt run instead of failing, and with the services the
# packages ship kept from starting (a test machine runs no daemon it did not ask for;
# the tests start their own, as children).

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
APT_WAIT=(-o DPkg::Lock::Timeout=300)

# apt_install PACKAGE...: update the lists once, then install without recommends.
# policy-rc.d refuses every service start during the install (invoke-rc.d and
# deb-systemd-invoke honour it); systemd units are disabled afterwards as well.
apt_install() {
    local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        made_policy=1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        $SUDO apt-get "${APT_WAIT[@]}" update -qq || status=$?
        APT_UPDATED=1
    fi
    if [ "$status" = 0 ]; then
        $SUDO apt-get "${APT_WAIT[@]}" install -y -qq --no-install-recommends "$@" \
            >/dev/null || status=$?
    fi
    if [ "$made_policy" = 1 ]; then
        $SUDO rm -f "$policy"
    fi
    return "$status"
}

# disable_units UNIT...: stop and disable units a package enabled, where systemd runs.
disable_units() {
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now "$@" >/dev/null 2>&1 || true
    fi
}
