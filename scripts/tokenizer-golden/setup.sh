#!/usr/bin/env bash
# Install the reference implementations into DIR (default .cache/tokenizer-golden,
# git-ignored): Hugging Face's tokenizers Node binding (the Rust library) and its Jinja
# engine for JavaScript. Idempotent and quick when they are there.
set -euo pipefail
dir=${1:-.cache/tokenizer-golden}
tokenizers=0.23.2
jinja=0.5.11
have() { # package version
  [ -f "$dir/node_modules/$1/package.json" ] &&
    node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
      "$(cd "$dir" && pwd)/node_modules/$1/package.json" "$2"
}
if have tokenizers "$tokenizers" && have @huggingface/jinja "$jinja"; then
  exit 0
fi
mkdir -p "$dir"
echo "tokenizer-golden: installing tokenizers@$tokenizers @huggingface/jinja@$jinja into $dir" >&2
npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund --silent \
  "tokenizers@$tokenizers" "@huggingface/jinja@$jinja"
