#!/bin/sh
# Add a built QuietLens bundle to the desktop menu of the current user (no root needed):
#
#   install-desktop.sh [BUNDLE_DIR]     # default: the folder this script is in, else dist/quietlens
#   install-desktop.sh --uninstall
#
# Installs quietlens.desktop (Exec pointing at the bundle), the icons and a NIfTI MIME type under
# ${XDG_DATA_HOME:-~/.local/share}. The bundle itself stays where it is: move it first, then run this.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
sizes="16 24 32 48 64 128 256 512"

refresh() {
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$data/applications" || true
    command -v update-mime-database >/dev/null && update-mime-database "$data/mime" || true
    command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$data/applications/quietlens.desktop" "$data/mime/packages/quietlens-nifti.xml" \
          "$data/icons/hicolor/scalable/apps/quietlens.svg"
    for s in $sizes; do rm -f "$data/icons/hicolor/${s}x${s}/apps/quietlens.png"; done
    refresh
    echo "QuietLens removed from the desktop menu (the bundle itself was left in place)"
    exit 0
fi

if [ $# -ge 1 ]; then
    bundle=$1
elif [ -x "$here/quietlens-gui" ]; then
    bundle=$here
else
    bundle=$here/../dist/quietlens
fi
bundle=$(cd "$bundle" 2>/dev/null && pwd) || { echo "no bundle at ${1:-$bundle}: run 'make package' first" >&2; exit 2; }
[ -x "$bundle/quietlens-gui" ] || { echo "$bundle has no quietlens-gui: not a QuietLens bundle" >&2; exit 2; }
icons=$bundle/_internal/quietlens/assets/icons
# Files shipped beside the script (source tree: packaging/; bundle: its top folder).
desktop=$here/quietlens.desktop
mime=$here/quietlens-nifti.xml

mkdir -p "$data/applications" "$data/mime/packages" "$data/icons/hicolor/scalable/apps"
# Exec and TryExec name the bundle's absolute path (quoted: it may contain spaces).
sed -e "s|^Exec=quietlens-gui|Exec=\"$bundle/quietlens-gui\"|" -e "s|^TryExec=quietlens-gui|TryExec=$bundle/quietlens-gui|" \
    "$desktop" > "$data/applications/quietlens.desktop"
cp "$mime" "$data/mime/packages/quietlens-nifti.xml"
cp "$icons/quietlens.svg" "$data/icons/hicolor/scalable/apps/quietlens.svg"
for s in $sizes; do
    mkdir -p "$data/icons/hicolor/${s}x${s}/apps"
    cp "$icons/quietlens-$s.png" "$data/icons/hicolor/${s}x${s}/apps/quietlens.png"
done
refresh
echo "installed $data/applications/quietlens.desktop -> $bundle/quietlens-gui"
