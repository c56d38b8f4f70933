"""Pipeline `serve`: a trained model on a local web page and a JSON API.

    python launch.py --config=configs/serve.py --config.checkpoint=runs/quickstart \
        --config.port=8000 --workdir=runs/serve

1. load the model once (predict's loading: threshold from the model or config.threshold);
2. compile its prediction and Grad-CAM programs (webapp.Service.start), so no request
waits for a compilation; 3. serve GET / (drop scans: probabilities, decision, Grad-CAM,
model card), GET /api/model and POST /api/predict (serving/webapp.py) on serve.host:port with
waitress's thread pool (serve.threads requests at once, one model). Ctrl-C stops it: one
line, exit 130. The page has no authentication, so it listens on 127.0.0.1 unless
serve.host says otherwise, and then warns.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bt_jax import io
from bt_jax.config import ConfigError
from bt_jax.errors import Stopped

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def make_server(config, service=None):
    """(waitress server, its URL, the Service) for config: bound first (a port in use fails
    before the model loads), then the model loaded and compiled; not yet running."""
    import waitress
    from bt_jax.serving import webapp
    host = config.serve.host
    if host not in LOCAL_HOSTS:
        log.warning("serve.host=%s: the page has no authentication; anyone who can reach this "
                    "address can upload scans and read the model's answers", host)
    loaded = {}

    def app(environ, start_response):  # the Flask app, set once the model is ready
        return loaded["app"](environ, start_response)
    try:
        server = waitress.create_server(app, host=host, port=int(config.port),
                                        threads=int(config.serve.threads), ident="bt_jax",
                                        clear_untrusted_proxy_headers=True)
    except OSError as e:  # in use, not this machine's address, an unknown name
        raise ConfigError(f"config.port / config.serve.host: cannot listen on {host} port "
                          f"{config.port} ({e.strerror or e}); choose another port (0: any "
                          "free one) or address") from None
    try:
        service = service or webapp.Service.start(config)
    except BaseException:
        server.close()
        raise
    loaded["app"] = webapp.make_app(service)
    # one socket: its port; several (a name with IPv4 and IPv6 addresses): the first's
    port = getattr(server, "effective_port", None) or server.effective_listen[0][1]
    name = f"[{host}]" if ":" in host else host
    return server, f"http://{name}:{port}/", service


def run(config, workdir: Path):
    server, url, service = make_server(config)
    io.write_json(Path(workdir) / "serve.json", {"url": url, "model_id": service.model.model_id,
                                                 "model": str(service.model.root)})
    print(f"serving {service.model.model_id} at {url} (Ctrl-C stops)", flush=True)
    server.run()   # waitress returns (its threads shut down) on Ctrl-C
    server.close()
    raise Stopped(f"stopped serving {url}")
