# Sourced by the scripts: one build cache outside the clone, and Go's bin dir
# on PATH (crictl).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/crius-target}
export PATH="$PATH:$(go env GOPATH 2>/dev/null || echo /root/go)/bin:$HOME/.cargo/bin"
