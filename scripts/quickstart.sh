#!/usr/bin/env bash
# The quickstart: build swarmcc, start a small office of three nodes on this
# machine (loopback ports, private state dirs, a fresh office key), and
# compile a real third-party C code base (Lua 5.4, from the lua-src crate)
# through it: cold (jobs spread over all nodes, the toolchain fetched by the
# other nodes) and then warm (every unit from the cache), printing the
# office's status and each node's statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/release-env.sh
cargo build --release --quiet
cargo fetch --quiet
BIN="$PWD/$RELEASE_DIR/swarmcc"
LUA=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/lua-src-551.1.0/lua-5.4.9 | head -n 1)
WORK=$(mktemp -d /tmp/swarmcc-quickstart.XXXXXX)
# What the nodes' sandboxes see lives in a directory of root's (SECURITY.md).
mkdir -p -m 0711 /var/lib/swarmcc-sandbox
SANDBOXES=$(mktemp -d /var/lib/swarmcc-sandbox/quickstart.XXXXXX)
chmod 0711 "$SANDBOXES"   # job uids pass through (and see nothing else)
NODES=3
cleanup() {
  for i in $(seq 1 $NODES); do
    SWARMCC_DIR="$WORK/node$i" "$BIN" --stop-server >/dev/null 2>&1 || true
  done
  rm -rf "$WORK" "$SANDBOXES"
}
trap cleanup EXIT

# The office: nodes on loopback ports with mDNS off (multicast must not leave
# the machine); nodes 2 and 3 bootstrap from node 1.
BASE_PORT=$(( 20000 + RANDOM % 20000 ))
PK=$("$BIN" office init --name quickstart --dir "$WORK/office")
FIRST=""
for i in $(seq 1 $NODES); do
  D="$WORK/node$i"
  mkdir -p "$D"
  PEER=$(SWARMCC_DIR="$D" "$BIN" node id)
  TOKEN=$("$BIN" token builder --coordinator --peer "$PEER" --office-key "$WORK/office/office.key")
  PORT=$(( BASE_PORT + i ))
  BOOT=""
  if [ -n "$FIRST" ]; then BOOT="\"$FIRST\""; else FIRST="/ip4/127.0.0.1/tcp/$PORT/p2p/$PEER"; fi
  cat > "$D/config.toml" <<CONF
[node]
name = "node$i"
max_jobs = 2
[sandbox]
uid_base = $(( 3900000 + i * 1000 ))
dir = "$SANDBOXES/node$i"
[network]
listen = ["/ip4/127.0.0.1/tcp/$PORT"]
bootstrap = [$BOOT]
mdns = false
[office]
name = "quickstart"
public_key = "$PK"
builder_token = "$TOKEN"
CONF
  SWARMCC_DIR="$D" "$BIN" --start-server
done
# The developer's machine is node 1: the wrapper talks to its own node.
export SWARMCC_DIR="$WORK/node1"
echo "== waiting for the office to form =="
for _ in $(seq 1 100); do
  S=$("$BIN" status --json); echo "$S" | grep -q "\"builders\":$NODES," && echo "$S" | grep -q "\"coordinator\":\"" && break
  sleep 0.2
done
"$BIN" status

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
echo "== cold build through the office (gcc packaged once by node1, fetched by the others) =="
time make -s -j6 CC="$BIN gcc"
./luatest "print(('swarmcc built lua: %s'):format(_VERSION))"
echo "-- node1 (the client: 'Successful distributed compiles' by builder) --"
"$BIN" --show-stats
for i in $(seq 2 $NODES); do
  echo "-- node$i --"
  SWARMCC_DIR="$WORK/node$i" "$BIN" --show-stats | grep -E "Jobs run for other nodes|Toolchains fetched|  from "
done
make -s clean
"$BIN" --zero-stats
echo "== warm build: every unit from the cache =="
time make -s -j6 CC="$BIN gcc"
./luatest
"$BIN" --show-stats
