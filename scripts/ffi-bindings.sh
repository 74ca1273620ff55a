#!/usr/bin/env bash
# Builds the handover-ffi library and generates its Kotlin, Swift and Python bindings into
# ffi/bindings/ (gitignored), then checks that the Swift C header compiles.
#
#   scripts/ffi-bindings.sh [--release] [--no-build] [--staticlib] [--lang kotlin|swift|python]...
#                           [--out DIR]
#
# --no-build   use the library (and uniffi-bindgen, if present) already in the target directory;
#              this is how `cargo test -p handover-ffi` calls it, because a cargo build inside a
#              running cargo test would wait forever for the target directory's lock. A missing
#              uniffi-bindgen is then built into a separate target directory (target/ffi-tools).
# --staticlib  also build target/<profile>/libhandover_ffi.a, the static library an iOS app links
#              (`cargo rustc --crate-type staticlib`; not a default crate type, see ffi/Cargo.toml).
# --lang       generate only these languages (default: all three).
#
# Environment: CARGO_TARGET_DIR (default ./target), HANDOVER_FFI_LIB_DIR and HANDOVER_FFI_LIB
# (see below), CC (default clang, else cc).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile=debug
cargo_profile=()
build=1
staticlib=0
langs=()
out=$root/ffi/bindings
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release; cargo_profile=(--release) ;;
        --no-build) build=0 ;;
        --staticlib) staticlib=1 ;;
        --lang) langs+=("$2"); shift ;;
        --out) out=$2; shift ;;
        *) echo "ffi-bindings: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#langs[@]} -eq 0 ] && langs=(kotlin swift python)

target=${CARGO_TARGET_DIR:-$root/target}
case "$(uname -s)" in
    Darwin) libname=libhandover_ffi.dylib ;;
    *) libname=libhandover_ffi.so ;;
esac
# HANDOVER_FFI_LIB_DIR overrides where uniffi-bindgen (and the library) are looked up, and
# HANDOVER_FFI_LIB the library itself: `cargo test` leaves the library it built in
# target/<profile>/deps/ without copying it up to target/<profile>/, so the Rust test passes
# that one.
libdir=${HANDOVER_FFI_LIB_DIR:-$target/$profile}
lib=${HANDOVER_FFI_LIB:-$libdir/$libname}
bindgen=$libdir/uniffi-bindgen

if [ "$build" = 1 ]; then
    # Two invocations: together, cargo would unify uniffi's features and build a third variant
    # of the library instead of reusing the one `cargo test -p handover-ffi` built.
    cargo build "${cargo_profile[@]}" -p handover-ffi
    cargo build "${cargo_profile[@]}" -p uniffi-bindgen
fi
if [ "$staticlib" = 1 ]; then
    cargo rustc "${cargo_profile[@]}" -p handover-ffi --lib --crate-type staticlib
fi
if [ ! -f "$lib" ]; then
    echo "ffi-bindings: $lib is missing; build it with: cargo build -p handover-ffi" >&2
    exit 1
fi
if [ ! -x "$bindgen" ]; then
    # Only reached with --no-build: a separate target directory has its own lock.
    echo "ffi-bindings: building uniffi-bindgen into $target/ffi-tools" >&2
    cargo build --quiet -p uniffi-bindgen --target-dir "$target/ffi-tools"
    bindgen=$target/ffi-tools/debug/uniffi-bindgen
fi

mkdir -p "$out"
for lang in "${langs[@]}"; do
    rm -rf "${out:?}/$lang"
    "$bindgen" generate "$lib" --metadata-no-deps --language "$lang" --out-dir "$out/$lang" --no-format
    case "$lang" in
        python)
            # The generated module loads the library from its own directory.
            ln -sf "$lib" "$out/python/$libname"
            ;;
        swift)
            # The C header that Swift imports through the module map must compile on its own.
            # Swift's importer is clang; the header's nullability qualifiers (_Nonnull) are
            # clang extensions, so under gcc they are defined away.
            cc=${CC:-$(command -v clang || echo cc)}
            flags=(-fsyntax-only -std=c11 -Wall -Wextra -Werror -I "$out/swift")
            if ! "$cc" --version 2>/dev/null | grep -q clang; then
                flags+=(-D_Nonnull= -D_Nullable= -D_Null_unspecified=)
            fi
            printf '#include "handover_ffiFFI.h"\n' | "$cc" "${flags[@]}" -x c -
            echo "ffi-bindings: swift C header handover_ffiFFI.h compiles ($cc ${flags[*]})"
            if "$cc" --version 2>/dev/null | grep -q clang; then
                # As Swift sees it: a clang module from the generated module map.
                mm=$(mktemp -d)
                cp "$out/swift/handover_ffiFFI.h" "$mm/"
                cp "$out/swift/handover_ffiFFI.modulemap" "$mm/module.modulemap"
                printf '@import handover_ffiFFI;\nint main(void) { return (int)uniffi_handover_ffi_checksum_func_version(); }\n' |
                    "$cc" -fsyntax-only -fmodules -fmodules-cache-path="$mm/cache" -Werror -I "$mm" -x objective-c -
                rm -rf "$mm"
                echo "ffi-bindings: swift module map imports as clang module handover_ffiFFI"
            fi
            ;;
    esac
    echo "ffi-bindings: $lang bindings in $out/$lang"
done
