#!/usr/bin/env bash
# Prints the path of a llama-server binary built from the llama.cpp tree that the pinned
# llama-cpp-python vendors, building it once if the cache has none for this version and flags.
#
#   scripts/llama_server.sh            # path on stdout; progress on stderr
#   scripts/llama_server.sh --check    # path if already built, exit 1 otherwise (never builds)
#
# The binary is the benchmark's reference peer: the same llama.cpp as qfserve's engine, compiled
# with the Makefile's LLAMA_CMAKE_ARGS, as llama-cpp-python is (a native build on a CPU with AMX
# crashes on batches of more than one token). The build takes minutes of CPU, so it is
# cached outside the repository:
#   ${QFSERVE_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qfserve}/llama-server-<version>/bin/llama-server
# A new pinned version or new flags give a new build; the sdist comes from PyPI through pip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python="python3"; fi
fi

version="${LLAMA_VERSION:-$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$here/pyproject.toml")}"
if [[ -z "$version" ]]; then
  echo "llama_server.sh: no pinned llama-cpp-python version in pyproject.toml" >&2
  exit 2
fi

cmake_args=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
)
# The Makefile's portable x86-64 flags, the ones llama-cpp-python itself is built with.
case "$(uname -m)" in
  x86_64 | amd64)
    read -r -a portable <<<"$(sed -n 's/^LLAMA_CMAKE_ARGS := //p' "$here/Makefile")"
    if [[ ${#portable[@]} -eq 0 ]]; then
      echo "llama_server.sh: no LLAMA_CMAKE_ARGS in the Makefile" >&2
      exit 2
    fi
    cmake_args+=("${portable[@]}")
    ;;
esac

cache_root="${QFSERVE_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qfserve}"
prefix="$cache_root/llama-server-$version"
binary="$prefix/bin/llama-server"
stamp="$prefix/build-args.txt"
wanted_stamp="$(printf '%s\n' "llama-cpp-python==$version" "${cmake_args[@]}")"

if [[ -x "$binary" && -f "$stamp" && "$(cat "$stamp")" == "$wanted_stamp" ]]; then
  echo "$binary"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  exit 1
fi

jobs="${LLAMA_SERVER_JOBS:-2}"
echo "==> building llama-server from llama-cpp-python $version's llama.cpp (-j$jobs, several minutes)" >&2
started=$(date +%s)
mkdir -p "$cache_root/src"
sdist="$cache_root/src/llama_cpp_python-$version.tar.gz"
if [[ ! -f "$sdist" ]]; then
  "$python" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" \
    -d "$cache_root/src" >&2
fi

work="$(mktemp -d "$cache_root/build-$version.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
source_dir="$work/llama_cpp_python-$version/vendor/llama.cpp"
cmake -S "$source_dir" -B "$work/build" "${cmake_args[@]}" >&2
cmake --build "$work/build" --target llama-server -j "$jobs" >&2

mkdir -p "$prefix/bin"
# Installed under a temporary name first so a concurrent caller never sees half a binary.
cp "$work/build/bin/llama-server" "$binary.tmp.$$"
mv "$binary.tmp.$$" "$binary"
printf '%s\n' "$wanted_stamp" >"$stamp"
echo "==> llama-server built in $(($(date +%s) - started)) s: $binary" >&2
echo "$binary"
