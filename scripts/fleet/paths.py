"""Where the fleet lab keeps its state: everything under var/fleet/ (gitignored), the cached base included."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = REPO / "var" / "fleet"
BASE = STATE / "base"  # the debootstrapped rootfs, shared read-only by every host
HOSTS = STATE / "hosts"  # one directory per host: upper/, work/, merged/, pids, console log
SSH_KEY = STATE / "ssh" / "id_ed25519"  # the controller's key for the lab only
APT_CACHE = STATE / "apt-cacher-ng"  # its config, cache and logs
WHEELHOUSE = (
    REPO / "dist" / "wheelhouse"
)  # beside the wheel the roles ship; production builds it the same way
# The lab's stand-ins only (moto's S3 server), shipped to the objectstore host by ansible/lab/objectstore.yml.
STAND_IN_WHEELHOUSE = REPO / "dist" / "lab-wheelhouse"
LAB_JSON = STATE / "lab.json"
INVENTORY = REPO / "ansible" / "inventories" / "lab"
VENV_BIN = REPO / ".venv" / "bin"
