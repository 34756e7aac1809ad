#!/usr/bin/env bash
# Gather a few hundred MB of real English prose with no dataset hub: the documentation, manuals and
# dictionaries that Debian packages ship (technical writing, reference manuals, two dictionaries with
# quotations, a glossary, fortunes). Needs only apt access to the Debian archive; no root is needed
# to download and unpack (nothing is installed).
#
#   bash scripts/gather_prose.sh /data/debian-prose          # downloads ~150 MB of .deb, unpacks them
#   softpick data build /data/debian-prose/root --out data/prose --val-fraction 0.04
#
# The package list is fixed, so a given Debian release gives the same text; the versions downloaded
# are written to OUT/packages.txt.
set -euo pipefail
out="${1:?usage: gather_prose.sh OUT_DIR}"
packages=(
  linux-doc-6.1 python3.11-doc postgresql-doc-15 perl-doc rust-doc emacs-common debian-handbook
  debian-reference-en git-doc gnu-standards sphinx-doc bash-doc
  dict-gcide dict-foldoc dict-jargon dict-devil fortunes
)
mkdir -p "$out/debs" "$out/root"
cd "$out/debs"
available=()
for p in "${packages[@]}"; do
  if apt-cache show "$p" >/dev/null 2>&1; then available+=("$p"); else echo "skipping $p (not in this release)" >&2; fi
done
apt-get download "${available[@]}"
for deb in *.deb; do
  dpkg -x "$deb" ../root
done
for deb in *.deb; do dpkg-deb -f "$deb" Package Version | paste - -; done > ../packages.txt
du -sh ../root
