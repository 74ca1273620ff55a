#!/usr/bin/env bash
# Compiles the generated Kotlin bindings with ffi/tests/kotlin/FlowTest.kt and runs the flow on
# the JVM (JNA loads the library), against a real relay process when one is built.
#
#   scripts/ffi-kotlin-test.sh [--no-build]
#
# --no-build  use the library, uniffi-bindgen and relay already built in target/debug.
#
# Installs what it needs if missing, from the registries the project uses:
#   - the Kotlin compiler: npm package kotlin-compiler, into target/ffi-kotlin (not global);
#   - JNA and kotlinx-coroutines (with its atomicfu runtime): Debian packages libjna-java,
#     libkotlinx-coroutines-java, libkotlinx-atomicfu-java;
#   - a JDK (java 17 is expected on the machine; Debian openjdk-17-jdk-headless otherwise).
# Environment: CARGO_TARGET_DIR (default ./target), HANDOVER_RELAY_BIN (relay to test against).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
kotlin_version=2.4.20
no_build=()
if [ "${1:-}" = "--no-build" ]; then
    no_build=(--no-build)
fi

sudo_if_needed() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v java >/dev/null || apt_install openjdk-17-jdk-headless
jars=(jna kotlinx-coroutines-core atomicfu)
for jar in "${jars[@]}"; do
    if [ ! -f "/usr/share/java/$jar.jar" ]; then
        echo "ffi-kotlin-test: installing libjna-java libkotlinx-coroutines-java libkotlinx-atomicfu-java" >&2
        apt_install libjna-java libkotlinx-coroutines-java libkotlinx-atomicfu-java
        break
    fi
done
kdir=$target/ffi-kotlin
kotlinc=$kdir/node_modules/kotlin-compiler/bin/kotlinc
if [ ! -x "$kotlinc" ] || ! grep -qx "$kotlin_version" "$kdir/node_modules/kotlin-compiler/build.txt" 2>/dev/null; then
    echo "ffi-kotlin-test: installing kotlin-compiler@$kotlin_version from npm" >&2
    mkdir -p "$kdir"
    npm install --silent --no-audit --no-fund --prefix "$kdir" "kotlin-compiler@$kotlin_version"
fi
klib=$kdir/node_modules/kotlin-compiler/lib

if [ ${#no_build[@]} -eq 0 ]; then
    cargo build -p handover-relay
fi
scripts/ffi-bindings.sh "${no_build[@]}" --lang kotlin --out "$target/ffi-bindings"
libdir=$target/debug
if [ -z "${HANDOVER_RELAY_BIN:-}" ]; then
    # The newer of handover-relay (cargo build) and relay-under-test (cargo test --workspace),
    # unless it is the placeholder relay of a workspace without the relay (no --listen flag).
    relay=$(ls -t "$libdir/handover-relay" "$libdir/relay-under-test" 2>/dev/null | head -n1 || true)
    if [ -n "$relay" ] && timeout 5 "$relay" --help 2>/dev/null </dev/null | grep -q -- --listen; then
        export HANDOVER_RELAY_BIN=$relay
    fi
fi

deps=/usr/share/java/jna.jar:/usr/share/java/kotlinx-coroutines-core.jar:/usr/share/java/atomicfu.jar
out=$kdir/flowtest.jar
echo "ffi-kotlin-test: compiling with kotlinc $kotlin_version" >&2
"$kotlinc" -nowarn -cp "$deps" -d "$out" \
    "$target/ffi-bindings/kotlin/uniffi/handover_ffi/handover_ffi.kt" ffi/tests/kotlin/FlowTest.kt ffi/tests/kotlin/CoroutinesShim.kt
exec java -Djna.library.path="$libdir" -cp "$out:$deps:$klib/kotlin-stdlib.jar" FlowTestKt
