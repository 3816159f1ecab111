"""Validates an Envoy v3 bootstrap (YAML on stdin) against Envoy's own protobuf schema.

The document is parsed into envoy.config.bootstrap.v3.Bootstrap with
google.protobuf.json_format.ParseDict, which rejects unknown fields and wrong types, and
resolves every typed_config (google.protobuf.Any) by its type URL: the message modules of
every type the export writes are imported below, so a type URL that names no known message
fails too. On success the parsed message is printed on stdout as JSON (proto field names),
for the tests' checks of what the bootstrap means; on failure the error is printed on stderr
and the exit status is 1.
"""

import json
import sys

import yaml
from google.protobuf import json_format

# Every message type the export may name in a typed_config: importing a module registers its
# messages in the default descriptor pool, which ParseDict resolves type URLs against.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_components_pb2  # noqa: F401 (FilterConfig)
from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.extensions.wasm.v3 import wasm_pb2  # noqa: F401
from google.protobuf import wrappers_pb2  # noqa: F401 (StringValue)


def load_time_problems(bootstrap):
    """Rules Envoy enforces when it loads a bootstrap that the schema alone does not say,
    for the parts the export writes: a route configuration names each domain once, a
    listener's filter chains match distinct server names, and a FilterConfig that does
    not disable its filter has a `config` (Envoy refuses "Empty route/virtual host per
    filter configuration")."""
    problems = []
    for listener in bootstrap.get("static_resources", {}).get("listeners", []):
        chains = listener.get("filter_chains", [])
        names = [n for c in chains for n in c.get("filter_chain_match", {}).get("server_names", [])]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"listener {listener['name']}: server name {name} in two filter chains")
        default = listener.get("default_filter_chain")
        for chain in chains + ([default] if default else []):
            for network_filter in chain.get("filters", []):
                manager = network_filter.get("typed_config", {})
                route_config = manager.get("route_config", {})
                domains = [d for v in route_config.get("virtual_hosts", []) for d in v.get("domains", [])]
                for domain in sorted({d for d in domains if domains.count(d) > 1}):
                    problems.append(f"listener {listener['name']}: domain {domain} in two virtual hosts")
                for vhost in route_config.get("virtual_hosts", []):
                    entries = [vhost] + vhost.get("routes", [])
                    for entry in entries:
                        for name, config in entry.get("typed_per_filter_config", {}).items():
                            if config.get("@type", "").endswith("/envoy.config.route.v3.FilterConfig") \
                                    and not config.get("disabled") and "config" not in config:
                                problems.append(
                                    f"{vhost['name']}/{entry.get('name', '')}: FilterConfig for {name} has no config")
    return sorted(set(problems))


def main():
    text = sys.stdin.read()
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        print(f"validate_envoy: not YAML: {error}", file=sys.stderr)
        return 1
    if not isinstance(document, dict):
        print("validate_envoy: the document is not a mapping", file=sys.stderr)
        return 1
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(document, bootstrap, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        print(f"validate_envoy: not an Envoy v3 Bootstrap: {error}", file=sys.stderr)
        return 1
    parsed = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
    problems = load_time_problems(document)
    if problems:
        print("validate_envoy: Envoy would refuse this bootstrap:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    json.dump(parsed, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
