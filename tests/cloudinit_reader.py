"""Run by Debian's /usr/bin/python3 (where cloud-init lives): read a drive as cloud-init would.

Prints one JSON document. Only readers are used; the datasource's side effects (writing
`files` into /, mounting devices) are never triggered.
"""

import base64
import json
import sys

from cloudinit import util
from cloudinit.sources import DataSourceConfigDrive
from cloudinit.sources.helpers import openstack


def b64(data):
    if data is None:
        return None
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def config_drive(path):
    result = DataSourceConfigDrive.read_config_drive(path)
    md = result["metadata"]
    net = None
    if result["networkdata"]:
        # The guest's NICs, as the guest would see them: one per link, eth0, eth1, ...
        links = result["networkdata"].get("links", [])
        macs = {link["ethernet_mac_address"]: f"eth{i}" for i, link in enumerate(links)}
        net = openstack.convert_net_json(result["networkdata"], known_macs=macs)
    return {
        "instance_id": md.get("instance-id"),
        "hostname": md.get("local-hostname"),
        "public_keys": md.get("public-keys") or md.get("public_keys"),
        "userdata": b64(result.get("userdata")),
        "files": {k: b64(v) for k, v in (result.get("files") or {}).items()},
        "network": net,
        "ec2_instance_id": (result.get("ec2-metadata") or {}).get("instance-id"),
        "version": result.get("version"),
    }


def nocloud(path):
    md, ud, _vd = util.read_seeded(base=path.rstrip("/") + "/", timeout=1, retries=0)
    try:
        network = util.load_yaml(util.load_file(path + "/network-config"))
    except OSError:
        network = None
    return {
        "instance_id": md.get("instance-id"),
        "hostname": md.get("local-hostname"),
        "public_keys": md.get("public-keys"),
        "userdata": b64(ud),
        "network": network,
    }


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    print(json.dumps(config_drive(path) if kind == "config-2" else nocloud(path)))
