#!/usr/bin/env bash
# The quickstart: build swarmcc, start a local node in a private state dir and
# compile a real third-party C code base (Lua 5.4, from the lua-src crate)
# through it, cold and then warm, printing the node's statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
cargo fetch --quiet
BIN="$PWD/target/release/swarmcc"
LUA=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/lua-src-551.1.0/lua-5.4.9 | head -n 1)
WORK=$(mktemp -d /tmp/swarmcc-quickstart.XXXXXX)
chmod 755 "$WORK"   # job uids must reach the sandbox files in the state dir
export SWARMCC_DIR="$WORK/state"
cleanup() { "$BIN" --stop-server >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/lua/src"
cp "$LUA"/*.c "$LUA"/*.h "$WORK/lua/src/"
cat > "$WORK/lua/src/main.c" <<'C'
#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"
#include <stdio.h>
int main(int argc, char **argv) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, argc > 1 ? argv[1] : "print('hello from lua')")) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_close(L);
    return 0;
}
C
cat > "$WORK/lua/Makefile" <<'MK'
CFLAGS = -O2 -g -Wall -std=gnu99 -DLUA_COMPAT_5_3 -DLUA_USE_LINUX
SRCS = $(wildcard src/*.c)
OBJS = $(SRCS:src/%.c=obj/%.o)
luatest: $(OBJS)
	gcc -o $@ $(OBJS) -lm -ldl
obj/%.o: src/%.c
	@mkdir -p obj
	$(CC) $(CFLAGS) -MMD -c $< -o $@
clean:
	rm -rf obj luatest
-include $(OBJS:.o=.d)
MK
cd "$WORK/lua"
"$BIN" --start-server
echo "== cold build through swarmcc (packages the gcc toolchain once) =="
time make -s -j"$(nproc)" CC="$BIN gcc"
./luatest "print(('swarmcc built lua: %s'):format(_VERSION))"
"$BIN" --show-stats
make -s clean
"$BIN" --zero-stats
echo "== warm build: every unit from the cache =="
time make -s -j"$(nproc)" CC="$BIN gcc"
./luatest
"$BIN" --show-stats
