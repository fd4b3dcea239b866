"""An end-to-end check of a provisioned lab (make fleet-smoke): what one user does, through the load balancer.

Uploads a photo through the LB, follows its job to `succeeded` (cutout on a worker host, analysis by the AI
worker), reads the item back from every API host directly (any backend answers for any item), and fetches the
original and the cutout through the LB's /images/ (from the bucket, then from the LB's cache). Exits non-zero with
the first thing that is wrong. Traffic goes to the lab's own addresses only.

    python scripts/fleet/smoke.py [--timeout 300]
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from drills import Lab, log

from bench.seed import photo
from wardrobe.web.auth import sign_init_data

DOMAIN = "wardrobe.lab"  # wardrobe_domain in ansible/inventories/lab


class Failed(Exception):
    pass


def request(url: str, auth: str = "", method: str = "GET", body: bytes | None = None, ctype: str = ""):
    headers = {"Authorization": auth} if auth else {}
    if ctype:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - see main()
    try:
        # Only the lab's own http:// addresses reach here (checked in main).
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def multipart(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = f"wardrobe-smoke-{uuid.uuid4().hex}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)
    log(f"ok: {what.split(':')[0]}")


def smoke(lab: Lab, timeout: float) -> dict:
    figures: dict = {}
    status, _, body = request(f"{lab.lb_url}/readyz")
    check(status == 200, f"LB /readyz answers 200: got {status} {body[:200]!r}")

    # The public edge: HTTPS with the LB's certificate (self-signed in the lab, hence -k) and HTTP/2.
    host = urlsplit(lab.lb_url).hostname
    tls = subprocess.run(
        [
            "curl",
            "-sk",
            "--max-time",
            "10",
            "--resolve",
            f"{DOMAIN}:443:{host}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            f"https://{DOMAIN}/readyz",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    check(
        tls.stdout.strip() == "200 2",
        f"HTTPS on {DOMAIN} answers 200 over HTTP/2: got {tls.stdout!r} {tls.stderr}",
    )

    user_id = 7_000_000 + int(time.time()) % 1_000_000
    auth = "tma " + sign_init_data(lab.spec["bot_token"], {"id": user_id, "first_name": "Smoke"})
    body, ctype = multipart(photo(4242, (480, 600)), {"category": "top", "notes": "fleet smoke"})
    started = time.monotonic()
    status, _, answer = request(f"{lab.lb_url}/api/v1/items", auth, "POST", body, ctype)
    check(status == 202, f"upload through the LB is accepted (202): got {status} {answer[:300]!r}")
    answer = json.loads(answer)
    item_id, job_id = answer["item"]["id"], answer["job"]["id"]

    job: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, raw = request(f"{lab.lb_url}/api/v1/jobs/{job_id}", auth)
        if status == 200:
            job = json.loads(raw)
            if job.get("state") in ("succeeded", "failed"):
                break
        time.sleep(2)
    figures["upload_to_ready_seconds"] = round(time.monotonic() - started, 1)
    check(job.get("state") == "succeeded", f"the job succeeds within {timeout:.0f} s: last answer {job}")

    seen = {}
    for host in lab.group("api"):
        probe = (
            "import sys, urllib.request as u; r = u.Request(sys.argv[1], headers={'Authorization': sys.argv[2]}); "
            "print(u.urlopen(r, timeout=10).read().decode())"
        )
        url = f"http://127.0.0.1:8000/api/v1/items/{item_id}"
        out = lab.run_in(host, "python3", "-c", probe, url, auth, timeout=20)
        check(
            out.returncode == 0,
            f"{host.name} answers for the item: {shlex.join(out.args[:3])} {out.stderr[-300:]}",
        )
        seen[host.name] = json.loads(out.stdout)
    items = list(seen.values())
    check(all(i == items[0] for i in items), f"every API host returns the same item: {seen}")
    item = items[0]
    check(
        item["status"] == "ready" and bool(item.get("cutout_url")), f"the item is ready with a cutout: {item}"
    )
    check(bool(item.get("category")), f"the item was analysed: {item}")

    for name in ("image_url", "cutout_url"):
        path = urlsplit(item[name]).path
        first = request(f"{lab.lb_url}{path}")
        second = request(f"{lab.lb_url}{path}")
        check(
            first[0] == 200 and second[0] == 200, f"{name} is served through the LB: {first[0]}, {second[0]}"
        )
        kind = "image/png" if name == "cutout_url" else "image/"
        check(first[1].get("Content-Type", "").startswith(kind), f"{name} has its content type: {first[1]}")
        check("immutable" in first[1].get("Cache-Control", ""), f"{name} is cacheable forever: {first[1]}")
        check(
            second[1].get("X-Cache-Status") == "HIT",
            f"{name} comes from the LB's cache the second time: {second[1]}",
        )
        figures[f"{name}_bytes"] = len(first[2])
    status, headers, body = request(f"{lab.lb_url}/images/{'0' * 64}.png")
    check(
        status == 404 and headers.get("Content-Type", "").startswith("application/json"),
        f"a missing image is a JSON 404: {status} {headers} {body[:200]!r}",
    )
    figures.update(item_id=item_id, job_id=job_id, api_hosts=sorted(seen))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    lab = Lab()
    host = urlsplit(lab.lb_url).hostname or ""
    if urlsplit(lab.lb_url).scheme != "http" or not host.startswith(("10.213.7.", "127.")):
        sys.exit(f"refusing {lab.lb_url}: the smoke test talks to loopback and 10.213.7.0/24 only")
    try:
        figures = smoke(lab, args.timeout)
    except Failed as exc:
        sys.exit(f"fleet smoke FAILED: {exc}")
    print(json.dumps({"passed": True, **figures}, indent=2))


if __name__ == "__main__":
    main()
