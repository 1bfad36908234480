#!/usr/bin/env bash
# Wine smoke test of the built installer, headless, in a fresh 64-bit prefix:
#   silent install -> files, shortcuts and registry entries in place -> a too-long /D= path is
#   refused with the bootstrap's exit code -> upgrade to a newer build keeps user data ->
#   silent uninstall removes the program and keeps user data.
#
#   bash installer/wine_smoke_test.sh [SETUP_OLD.exe SETUP_NEW.exe]
#
# Without arguments it builds two installers (this checkout's version and 99.0.0) with build.sh.
# Needs Debian's wine (apt-get install wine64 wine); installs it when missing and running as root.
#
# Test-only switch: CANVAS_CHAT_SETUP_TEST_SKIP_DEPS=1 makes Setup skip downloading Python and
# running bootstrap.py (no network here, and no Python for Windows); Setup then only runs
# `uv.exe --version` and writes logs/setup-test-mode.txt. Everything else is the real installer.
# Known limit: Wine 8.0 (Debian 12) has no bcryptprimitives.dll, which uv.exe (Rust) imports, so
# uv.exe exits with 0xC0000135 there; the test reports that line but does not fail on it.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/canvas-chat-wine.XXXXXX)
LOG="$WORK/smoke.log"
FAILS=0
PASSES=0
exec > >(tee "$LOG") 2>&1

pass() { PASSES=$((PASSES + 1)); echo "PASS  $*"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL  $*"; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

WINE64=$(command -v wine64 || true)
[ -n "$WINE64" ] || [ ! -x /usr/lib/wine/wine64 ] || WINE64=/usr/lib/wine/wine64
if [ -z "$WINE64" ] && [ "$(id -u)" -eq 0 ]; then
    echo "== apt-get install wine64 wine"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wine64 wine
    WINE64=$(command -v wine64 || echo /usr/lib/wine/wine64)
fi
[ -x "$WINE64" ] || { echo "wine64 not found; apt-get install wine64 wine"; exit 2; }
WINESERVER=$(command -v wineserver || echo /usr/lib/wine/wineserver)

if [ $# -eq 2 ]; then
    OLD=$1; NEW=$2
else
    echo "== building two installers"
    bash "$HERE/build.sh" --out "$WORK/old" >/dev/null || { echo "build failed"; exit 1; }
    bash "$HERE/build.sh" --out "$WORK/new" --version 99.0.0 >/dev/null || { echo "build failed"; exit 1; }
    OLD=$(ls "$WORK"/old/CanvasChat-Setup-*.exe); NEW=$(ls "$WORK"/new/CanvasChat-Setup-*.exe)
fi
ver_of() { basename "$1" .exe | sed 's/^CanvasChat-Setup-//'; }
OLD_VER=$(ver_of "$OLD"); NEW_VER=$(ver_of "$NEW")
echo "== old $OLD_VER: $OLD"
echo "== new $NEW_VER: $NEW"

# A fresh prefix and a throwaway HOME (wine maps the Windows desktop to $HOME or ~/Desktop).
export HOME="$WORK/home" WINEPREFIX="$WORK/prefix" WINEARCH=win64 WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"   # no Mono/Gecko prompts, no XDG menus
export CANVAS_CHAT_SETUP_TEST_SKIP_DEPS=1
mkdir -p "$HOME"
start=$(date +%s)
"$WINE64" wineboot --init >/dev/null 2>&1
"$WINESERVER" -w
echo "== prefix ready in $(( $(date +%s) - start ))s"

USER_DIR="$WINEPREFIX/drive_c/users/$(id -un)"
INSTDIR="$USER_DIR/AppData/Local/Programs/CanvasChat"
START_MENU="$USER_DIR/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Canvas Chat"
DESKTOP="$USER_DIR/Desktop"
USER_DATA="$USER_DIR/AppData/Local/CanvasChat"
KEY='Software\\\\Microsoft\\\\Windows\\\\CurrentVersion\\\\Uninstall\\\\CanvasChat'

reg_value() {  # reg_value NAME -> the value in user.reg under our uninstall key
    "$WINESERVER" -w
    awk -v key="[$KEY]" -v name="\"$1\"" '
        index($0, key) == 1 { inside = 1; next }
        /^\[/ { inside = 0 }
        inside && index($0, name "=") == 1 { sub(/^[^=]*=/, ""); print; exit }' "$WINEPREFIX/user.reg"
}
lnk_has() { python3 -c 'import sys; b = open(sys.argv[1], "rb").read(); sys.exit(0 if sys.argv[2].encode("utf-16-le") in b or sys.argv[2].encode() in b else 1)' "$1" "$2"; }
run_setup() { "$WINE64" "$@"; local rc=$?; "$WINESERVER" -w; return $rc; }

echo "== 1. silent install of $OLD_VER"
run_setup "$OLD" /S; rc=$?
check "installer exit code 0 (got $rc)" test "$rc" -eq 0
for f in uv/uv.exe bootstrap.py canvas-chat.ico Uninstall.exe setup/CanvasChat-Setup.exe \
         payload/requirements.txt payload/requirements-torch-cu128.txt payload/requirements-torch-cpu.txt \
         "payload/canvas_chat-$OLD_VER-py3-none-any.whl" logs/setup-test-mode.txt; do
    check "file $f" test -s "$INSTDIR/$f"
done
check "uv.exe is a PE32+ x86-64 binary" bash -c "file '$INSTDIR/uv/uv.exe' | grep -q 'PE32+ executable.*x86-64'"
echo "      setup-test-mode.txt: $(cat "$INSTDIR/logs/setup-test-mode.txt" 2>/dev/null)"
check "Start menu: Canvas Chat.lnk -> env\\Scripts\\canvas-chat.exe" lnk_has "$START_MENU/Canvas Chat.lnk" 'env\Scripts\canvas-chat.exe'
check "Start menu: Repair Canvas Chat.lnk -> setup /REPAIR" lnk_has "$START_MENU/Repair Canvas Chat.lnk" '/REPAIR'
check "Start menu: Uninstall Canvas Chat.lnk" test -s "$START_MENU/Uninstall Canvas Chat.lnk"
check "Desktop: Canvas Chat.lnk -> env\\Scripts\\canvas-chat.exe" lnk_has "$DESKTOP/Canvas Chat.lnk" 'env\Scripts\canvas-chat.exe'
check "registry DisplayName" test "$(reg_value DisplayName)" = '"Canvas Chat"'
check "registry DisplayVersion = $OLD_VER" test "$(reg_value DisplayVersion)" = "\"$OLD_VER\""
check "registry InstallLocation" bash -c "reg=\$(cat); echo \"\$reg\" | grep -q 'AppData.*Local.*Programs.*CanvasChat'" <<<"$(reg_value InstallLocation)"
check "registry UninstallString" bash -c "grep -q 'Uninstall.exe' <<<'$(reg_value UninstallString)'"
check "registry QuietUninstallString ends with /S" bash -c "grep -q 'Uninstall.exe.* /S' <<<'$(reg_value QuietUninstallString)'"

echo "== 2. user data, where engine/paths.py puts it on Windows (platformdirs CanvasChat, no author)"
mkdir -p "$USER_DATA/Logs" "$USER_DATA/models/demo"
echo "chat history $(date +%s)" > "$USER_DATA/chats.sqlite3"
echo '{"schema": 1}' > "$USER_DATA/settings.json"
echo "log line" > "$USER_DATA/Logs/canvas-chat.log"
echo "weights" > "$USER_DATA/models/demo/model.safetensors"
DATA_SUM=$(cd "$USER_DATA" && find . -type f -exec sha256sum {} + | sort | sha256sum)

echo "== 3. a too-long install folder is refused"
LONG='C:\'$(printf 'x%.0s' $(seq 1 100))
run_setup "$OLD" /S "/D=$LONG"; rc=$?
check "exit code 10 (PATH_TOO_LONG) for a 103-character folder (got $rc)" test "$rc" -eq 10
check "nothing extracted into the long folder" test ! -e "$WINEPREFIX/drive_c/$(printf 'x%.0s' $(seq 1 100))/uv"

echo "== 4. upgrade in place to $NEW_VER"
run_setup "$NEW" /S; rc=$?
check "upgrade exit code 0 (got $rc)" test "$rc" -eq 0
check "registry DisplayVersion = $NEW_VER" test "$(reg_value DisplayVersion)" = "\"$NEW_VER\""
check "new wheel in place" test -s "$INSTDIR/payload/canvas_chat-$NEW_VER-py3-none-any.whl"
check "old wheel removed" test ! -e "$INSTDIR/payload/canvas_chat-$OLD_VER-py3-none-any.whl"
check "user data unchanged by the upgrade" test "$(cd "$USER_DATA" && find . -type f -exec sha256sum {} + | sort | sha256sum)" = "$DATA_SUM"

echo "== 5. silent uninstall"
# Stand in for the environment the bootstrap builds on Windows (skipped here): the uninstaller
# must move it aside (its "is the app running?" check) and then remove it.
mkdir -p "$INSTDIR/env/Scripts" && echo stand-in > "$INSTDIR/env/Scripts/canvas-chat.exe"
run_setup "$INSTDIR/Uninstall.exe" /S; rc=$?
sleep 1; "$WINESERVER" -w  # the uninstaller re-runs itself from %TEMP%; wait for that copy too
check "uninstaller exit code 0 (got $rc)" test "$rc" -eq 0
check "install folder removed" test ! -e "$INSTDIR"
check "Start menu folder removed" test ! -e "$START_MENU"
check "desktop shortcut removed" test ! -e "$DESKTOP/Canvas Chat.lnk"
check "registry uninstall key removed" test -z "$(reg_value DisplayName)"
check "user data kept by the silent uninstall" test "$(cd "$USER_DATA" && find . -type f -exec sha256sum {} + | sort | sha256sum)" = "$DATA_SUM"

echo "== 6. without the test switch: the dependency step fails with a mapped exit code, cleanly"
# Here uv.exe cannot start (Wine 8.0) or cannot download Python (no network): either way Setup must
# stop with the bootstrap table's code (15 setup files / 16 Python download), keep the Repair
# shortcut and the uninstall entry, and not create the app shortcut.
CANVAS_CHAT_SETUP_TEST_SKIP_DEPS= run_setup "$OLD" /S; rc=$?
check "exit code 15 or 16 (got $rc)" test "$rc" -eq 15 -o "$rc" -eq 16
check "Repair shortcut in place to finish later" test -s "$START_MENU/Repair Canvas Chat.lnk"
check "uninstall entry in place" test -n "$(reg_value UninstallString)"
check "no app shortcut for an app that is not installed" test ! -e "$START_MENU/Canvas Chat.lnk"
run_setup "$INSTDIR/Uninstall.exe" /S; sleep 1; "$WINESERVER" -w
check "uninstall after the failed install leaves nothing" test ! -e "$INSTDIR"

echo "== $PASSES passed, $FAILS failed (log: $LOG)"
"$WINESERVER" -k 2>/dev/null
[ "$FAILS" -eq 0 ]
