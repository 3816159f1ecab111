# Sourced by the benches that write policy folders (glue.sh, layout.sh, memory.sh), after
# common.sh, with UP_PORT (the upstream's port) and KEY_HEADER set: a policy folder forwarding
# to the upstream, and every bundled plugin on a route of its own with requests its plugin
# lets through.

# Every bundled plugin (crate names; the module is the name with underscores), and the
# secrets of the credentials its requests carry.
ALL_PLUGINS=(acl api-lifecycle basic-auth cors ext-authz hmac-auth ip-restriction jwt-auth
    key-auth metering quota rate-limit token-introspection transformer)
JWT_SECRET=bench-jwt-secret-0123456789abcdef # HS256 wants at least 32 bytes
HMAC_SECRET=bench-hmac-secret
BASIC_PASSWORD=bench-password

# policy_folder DIR PORT PLUGINS-YAML [CLUSTERS-YAML ROUTES-YAML]: a policy folder: the upstream
# cluster and the route / to it, after the clusters and routes given (list items, indented
# as in the file)
policy_folder() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    cat >"$dir/bench.yaml" <<YAML
listeners:
  - name: bench
    address: 127.0.0.1:$port
    protocol: http
clusters:
${4:-}
  - name: upstream
    endpoints:
      - address: 127.0.0.1:$UP_PORT
virtual_hosts:
  - name: bench
    domains: ["*"]
    routes:
${5:-}
      - name: bench
        match: { path: { prefix: / } }
        forward: { cluster: upstream }
$3
YAML
}

all_policies() {
    local p routes plugins=""
    routes=$(
        cat <<YAML
      - name: introspect
        match: { path: { exact: /introspect } }
        direct_response:
          status: 200
          body: '{"active": true, "sub": "bench"}'
          headers: { content-type: application/json }
YAML
        for p in "${ALL_PLUGINS[@]}"; do
            printf '      - name: p-%s\n        match: { path: { prefix: /p/%s } }\n        forward: { cluster: upstream }\n' "$p" "$p"
        done
    )
    if (($3)); then plugins=$(all_plugins_yaml); fi
    policy_folder "$1" "$2" "$plugins" "  - name: self
    endpoints:
      - address: 127.0.0.1:$2" "$routes"
}

# all_plugins_yaml: the `plugins:` section, every bundled plugin applied to its route alone,
# configured so that the requests of all_headers pass: the plugins that call a service call
# the upstream (ext-authz, whose 200 allows; metering's batches) or the gateway's own
# /introspect (token-introspection; answers are cached); jwt-auth has an inline key.
all_plugins_yaml() {
    local jwt_key
    jwt_key=$(printf %s "$JWT_SECRET" | base64 -w0 | tr '+/' '-_' | tr -d '=')
    echo "plugins:"
    on_route acl '{ require_consumer: false, routes: { p-acl: [ { methods: [GET] } ] } }'
    on_route api-lifecycle '{ routes: { p-api-lifecycle: { deprecated: { since: "2026-01-01T00:00:00Z", sunset: "2099-01-01T00:00:00Z", link: "https://docs.example.com/v2" } } } }'
    on_route basic-auth "{ consumers: [ { name: bench, password: $BASIC_PASSWORD } ] }"
    on_route cors '{ allow_origins: [https://app.example.com], max_age: 600 }'
    on_route ext-authz '{ cluster: upstream, path: /authz, timeout_ms: 1000 }'
    on_route hmac-auth "{ consumers: [ { username: bench, secret: $HMAC_SECRET } ] }"
    on_route ip-restriction '{ allow: [127.0.0.0/8] }'
    on_route jwt-auth "{ keys: [ { kid: bench, kty: oct, alg: HS256, k: $jwt_key } ] }"
    on_route key-auth "{ consumers: [ { name: bench, keys: [$API_KEY] } ] }"
    on_route metering '{ billing_cluster: upstream, path: /usage }'
    on_route quota '{ plans: { unlimited: { per_day: 1000000000 } }, default_plan: unlimited }'
    on_route rate-limit '{ plans: { unlimited: { requests_per_second: 1000000000, burst: 1000000000 } }, key: route, default_plan: unlimited }'
    on_route token-introspection '{ cluster: self, path: /introspect }'
    on_route transformer '{ request: { headers: { set: { x-gateway: tollgate } } }, response: { headers: { add: { x-served-by: tollgate } } } }'
}
# on_route NAME CONFIG: one plugin instance, on the route p-NAME alone
on_route() {
    printf '  - name: %s\n    module: %s.wasm\n    apply_to: { routes: [p-%s] }\n    config: %s\n' \
        "$1" "${1//-/_}" "$1" "$2"
}

# all_headers: sets HEADERS[NAME], the headers ("name: value" lines) of a request to /p/NAME
# that its plugin lets through: a JWT and an HMAC signature of the date made now (the
# signature is good for 300 s), a Basic password, an API key, an Origin.
declare -A HEADERS
all_headers() {
    local jwt date signature
    {
        read -r jwt
        read -r date
        read -r signature
    } < <("$PYTHON" - "$JWT_SECRET" "$HMAC_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
from email.utils import formatdate

jwt_secret, hmac_secret = (arg.encode() for arg in sys.argv[1:3])
b64url = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
header = {"alg": "HS256", "typ": "JWT", "kid": "bench"}
claims = {"sub": "bench", "exp": int(time.time()) + 86400}
signed = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
print(signed + "." + b64url(hmac.new(jwt_secret, signed.encode(), hashlib.sha256).digest()))
date = formatdate(usegmt=True)
print(date)
print(base64.b64encode(hmac.new(hmac_secret, f"date: {date}".encode(), hashlib.sha256).digest()).decode())
PY
    ) || die "cannot make the credentials of the requests"
    HEADERS=()
    HEADERS[basic-auth]="authorization: Basic $(printf 'bench:%s' "$BASIC_PASSWORD" | base64 -w0)"
    HEADERS[cors]="origin: https://app.example.com"
    HEADERS[hmac-auth]="date: $date
authorization: hmac username=\"bench\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"$signature\""
    HEADERS[jwt-auth]="authorization: Bearer $jwt"
    HEADERS[key-auth]=$KEY_HEADER
    HEADERS[token-introspection]="authorization: Bearer bench-token"
}

# all_paths: the path of every route the load runs, / last
all_paths() {
    local p
    for p in "${ALL_PLUGINS[@]}"; do echo "/p/$p"; done
    echo /
}

# all_lua FILE: a wrk script that sends the requests of all_headers to every route in turn
all_lua() {
    local path line
    {
        echo 'local requests = {}'
        echo 'function init(args)'
        while read -r path; do
            printf '    requests[#requests + 1] = wrk.format("GET", "%s", {' "$path"
            while IFS= read -r line; do
                [[ -z $line ]] || printf ' ["%s"] = [[%s]],' "${line%%: *}" "${line#*: }"
            done <<<"${HEADERS[${path#/p/}]:-}"
            echo ' })'
        done < <(all_paths)
        echo 'end'
        echo 'local turn = 0'
        echo 'function request()'
        echo '    turn = turn % #requests + 1'
        echo '    return requests[turn]'
        echo 'end'
    } >"$1"
}
