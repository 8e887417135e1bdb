"""docker-compose.yml and the Dockerfile, read without Docker: every container's command is one that
`aurora-db` accepts, and the addresses in it agree with each other (storage nodes, compute nodes,
the proxy, health checks, published ports, fixed addresses). scripts/compose-e2e.sh runs the cluster
for real."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from aurora_db.cli import build_parser
from aurora_db.cluster import STORAGE_NODES

ROOT = Path(__file__).resolve().parent.parent
STORAGE_SERVICES = [f"storage-{node_id}" for node_id, _ in STORAGE_NODES]
COMPUTE_SERVICES = ["db1", "db2", "db3"]
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def with_defaults(value):
    """Compose's ${NAME:-default}, as with no such variable set."""
    if isinstance(value, str):
        return DEFAULT.sub(lambda match: match.group(2), value)
    if isinstance(value, list):
        return [with_defaults(item) for item in value]
    if isinstance(value, dict):
        return {key: with_defaults(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return with_defaults(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def parsed(service: dict):
    return build_parser().parse_args([str(argument) for argument in service["command"]])


def health_port(service: dict) -> int:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "aurora-db-docker", "health"], test
    return int(test[4].rpartition(":")[2])


def test_the_cluster_has_six_storage_nodes_three_compute_nodes_and_the_proxy(services):
    assert sorted(services) == sorted(STORAGE_SERVICES + COMPUTE_SERVICES + ["proxy"])


def test_every_command_is_accepted_by_aurora_db(services):
    for name, service in services.items():
        parsed(service)  # argparse exits on a flag it does not know


def test_storage_nodes_keep_their_az_and_data_in_a_named_volume(compose, services):
    for (node_id, az), name in zip(STORAGE_NODES, STORAGE_SERVICES):
        args = parsed(services[name])
        assert (args.command, args.node_id, args.az) == ("storage-node", node_id, az)
        assert f"{name}:{args.data}" in services[name]["volumes"]
        assert name in compose["volumes"]
        assert health_port(services[name]) == args.listen[1]


def test_every_storage_node_names_the_other_five_as_peers_where_they_listen(services):
    listening = {name: parsed(services[name]).listen[1] for name in STORAGE_SERVICES}
    for node_id, _ in STORAGE_NODES:
        args = parsed(services[f"storage-{node_id}"])
        assert sorted(args.peers) == sorted((peer_id, f"storage-{peer_id}", listening[f"storage-{peer_id}"])
                                            for peer_id, _ in STORAGE_NODES if peer_id != node_id), node_id


def test_compute_nodes_name_all_six_storage_nodes_where_they_listen(compose, services):
    listening = {name: parsed(services[name]).listen[1] for name in STORAGE_SERVICES}
    roles = {}
    for name in COMPUTE_SERVICES:
        args = parsed(services[name])
        roles[name] = args.role
        assert args.command == "compute-node" and args.node_id == name
        assert sorted(args.storage) == sorted((node_id, f"storage-{node_id}", listening[f"storage-{node_id}"])
                                              for node_id, _ in STORAGE_NODES)
        assert args.advertise_admin == (name, args.admin[1])  # readers reach the writer's stream there
        assert f"{name}:{args.data}" in services[name]["volumes"] and name in compose["volumes"]
        assert health_port(services[name]) == args.admin[1]
        assert set(services[name]["depends_on"]) >= ({"db1"} if name != "db1" else set(STORAGE_SERVICES))
    assert roles == {"db1": "writer", "db2": "reader", "db3": "reader"}


def test_the_proxy_fronts_every_compute_node_and_publishes_both_endpoints(services):
    proxy = services["proxy"]
    args = parsed(proxy)
    compute = {name: parsed(services[name]) for name in COMPUTE_SERVICES}
    assert sorted(args.node) == sorted((name, name, node.listen[1], node.admin[1]) for name, node in compute.items())
    published = {int(port.rpartition(":")[2]) for port in proxy["ports"]}
    assert published == {args.writer_listen[1], args.reader_listen[1]}
    assert health_port(proxy) == args.admin[1]
    assert set(proxy["depends_on"]) == set(COMPUTE_SERVICES)  # a proxy with no writer yet would promote one


def test_every_container_resolves_every_name_to_that_containers_fixed_address(compose, services):
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    addresses = {name: ipaddress.ip_address(service["networks"]["default"]["ipv4_address"])
                 for name, service in services.items()}
    assert all(address in subnet for address in addresses.values())
    assert len(set(addresses.values())) == len(addresses)
    for service in services.values():
        hosts = dict(entry.split(":") for entry in service["extra_hosts"])
        assert {name: ipaddress.ip_address(address) for name, address in hosts.items()} == addresses


def test_the_image_builds_from_python_3_11_slim_and_runs_as_a_user(services):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for package in ("aurora_db", "compute_node", "storage_node", "proxy"):
        assert f"!{package}/" in ignored
        assert f"COPY {package} /src/{package}" in dockerfile
