"""Test support: a stand-in for the GCE metadata server of one Cloud TPU VM worker.

It answers what the documentation of the metadata server says and what the code relies
on (https://cloud.google.com/compute/docs/metadata/querying-metadata and
.../metadata/overview): GET http://HOST/computeMetadata/v1/instance/attributes/KEY with
the header `Metadata-Flavor: Google` returns the attribute's value as text (200); a
request without that header is refused with 403; an attribute the instance does not
have is 404. A TPU VM of a multi-host slice carries `agent-worker-number` (this host's
index) and `worker-network-endpoints` (every worker, comma-separated, each either a host
name or `name:id:ip`), the attributes JAX's Cloud TPU cluster detection reads.
"""

from __future__ import annotations

import http.server
import threading


class MetadataServer:
    """Serves `attributes` on 127.0.0.1 (a free port); `.host` is what GCE_METADATA_IP takes."""

    def __init__(self, attributes: dict[str, str]):
        self.attributes = dict(attributes)
        self.requests: list[tuple[str, int]] = []  # (path, status)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                prefix = "/computeMetadata/v1/instance/attributes/"
                key = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if self.headers.get("Metadata-Flavor") != "Google":
                    status, body = 403, "Missing Metadata-Flavor:Google header."
                elif key in server.attributes:
                    status, body = 200, server.attributes[key]
                else:
                    status, body = 404, "Not found"
                server.requests.append((self.path, status))
                data = body.encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/text")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> MetadataServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def fake_tpu_pci(root: str, chips: int = 4) -> str:
    """A sysfs PCI device tree holding `chips` TPU v4 chips and a Google virtual NIC (same
    vendor id, not a TPU), for NME_PCI_DEVICES."""
    import os

    devices = [("0x1ae0", "0x005e")] * chips + [("0x1ae0", "0x0042"), ("0x8086", "0x1237")]
    for i, (vendor, device) in enumerate(devices):
        path = os.path.join(root, f"0000:00:{i:02x}.0")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "vendor"), "w") as f:
            f.write(vendor + "\n")
        with open(os.path.join(path, "device"), "w") as f:
            f.write(device + "\n")
    return root
