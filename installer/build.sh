#!/usr/bin/env bash
# Builds the Windows installer on Linux: installer/build/CanvasChat-Setup-<version>.exe
#
#   bash installer/build.sh [--out DIR] [--version X.Y.Z] [--fast]
#
# Stages uv.exe (PyPI's signed uv win_amd64 wheel, hash-pinned in uv-windows.txt), the app wheel
# built from this checkout, bootstrap.py, the pins and the icon, then runs makensis. Installs
# nsis and p7zip-full with apt-get when they are missing. Needs $PYTHON (default python3, 3.11+)
# with pip, and PyPI for the uv wheel and the wheel's build backend. Downloads are cached in
# installer/build/downloads.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT="$HERE/build"
VERSION_OVERRIDE=""
COMPRESSOR=lzma
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        --version) VERSION_OVERRIDE=$2; shift 2 ;;  # test builds only (the wine upgrade check)
        --fast) COMPRESSOR=zlib; shift ;;            # test builds only: 4x faster, bigger file
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
DOWNLOADS="$HERE/build/downloads"
STAGE="$OUT/stage"
PYTHON=${PYTHON:-python3}

need_apt=()
command -v makensis >/dev/null || need_apt+=(nsis)
command -v 7z >/dev/null || need_apt+=(p7zip-full)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
[ -z "$VERSION_OVERRIDE" ] || VERSION=$VERSION_OVERRIDE
VI_VERSION=$("$PYTHON" -c 'import re, sys; n = [int(x) for x in re.findall(r"\d+", sys.argv[1])[:4]]; print(".".join(map(str, n + [0] * (4 - len(n)))))' "$VERSION")
echo "== Canvas Chat $VERSION"

rm -rf "$STAGE"
mkdir -p "$STAGE/uv" "$STAGE/payload" "$DOWNLOADS"

echo "== uv.exe"
UV_PIN=$(grep -E '^uv==' "$HERE/uv-windows.txt" | cut -d' ' -f1)
UV_WHEEL="$DOWNLOADS/${UV_PIN/==/-}-py3-none-win_amd64.whl"
if [ ! -f "$UV_WHEEL" ]; then
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform win_amd64 --require-hashes -r "$HERE/uv-windows.txt" -d "$DOWNLOADS"
fi
"$PYTHON" - "$UV_WHEEL" "$STAGE/uv/uv.exe" "$HERE/uv-windows.txt" <<'EOF'
import hashlib, re, sys, zipfile
wheel, out, pins = sys.argv[1:]
want = re.search(r"sha256:([0-9a-f]{64})", open(pins).read()).group(1)
got = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
if got != want:
    sys.exit(f"{wheel}: sha256 {got} does not match the pin {want}")
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith("/scripts/uv.exe"))
    open(out, "wb").write(zf.read(name))
EOF

echo "== app wheel"
# Build from a copy of what the wheel holds, so a shared working tree's build/ is left alone.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
"$PYTHON" - "$ROOT" "$SRC" "$VERSION" <<'EOF'
import pathlib, re, shutil, sys
root, dst, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
for name in ("app", "engine", "resources"):
    shutil.copytree(root / name, dst / name, ignore=skip)
for path in root.iterdir():
    if path.is_file() and (path.name in ("pyproject.toml", "README.md", "setup.cfg") or path.name.startswith("LICENSE")):
        shutil.copy2(path, dst / path.name)
pyproject = dst / "pyproject.toml"
text = pyproject.read_text(encoding="utf-8")
pyproject.write_text(re.sub(r'(?m)^version = "[^"]*"', f'version = "{version}"', text, count=1), encoding="utf-8")
EOF
# With build isolation pip fetches the build backend pyproject.toml asks for (setuptools>=69,
# wheel) instead of using whatever $PYTHON has: a fresh machine's setuptools is older and
# has no bdist_wheel.
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$STAGE/payload" "$SRC"
APP_WHEEL=$(cd "$STAGE/payload" && ls canvas_chat-"$VERSION"-*.whl)

echo "== bootstrap, the engine's machine probe, pins, icon"
cp "$HERE/bootstrap.py" "$STAGE/"
# bootstrap.py asks the engine's own probe about the GPU: one nvidia-smi parser for app, worker and installer.
cp "$ROOT/engine/machine.py" "$STAGE/"
cp "$HERE"/pins/requirements.txt "$HERE"/pins/requirements-torch-cu128.txt "$HERE"/pins/requirements-torch-cpu.txt \
    "$HERE"/pins/requirements-triton-cu128.txt "$STAGE/payload/"
if [ -f "$ROOT/resources/icons/canvas-chat.ico" ]; then
    cp "$ROOT/resources/icons/canvas-chat.ico" "$STAGE/canvas-chat.ico"
else
    "$PYTHON" "$HERE/make_icon.py" "$STAGE/canvas-chat.ico"
fi
"$PYTHON" "$HERE/bootstrap.py" --print-nsis-defines > "$STAGE/bootstrap-defines.nsh"
SETUP="$OUT/CanvasChat-Setup-$VERSION.exe"
cat > "$STAGE/build.nsh" <<EOF
!define VERSION "$VERSION"
!define VI_VERSION "$VI_VERSION"
!define APP_WHEEL "$APP_WHEEL"
!define OUTFILE "$SETUP"
EOF

echo "== makensis"
makensis -V2 -INPUTCHARSET UTF8 -DSTAGE_DIR="$STAGE" -DCOMPRESSOR="$COMPRESSOR" "$HERE/canvas-chat.nsi"

file "$SETUP"
sha256sum "$SETUP" | tee "$SETUP.sha256"
echo "== built $SETUP ($(du -h "$SETUP" | cut -f1))"
