"""Serving a trained model: the web app and its page, run by the `serve` pipeline.

    from bt_jax.serving import webapp
    svc = webapp.Service.start(config)   # load once; compile prediction and Grad-CAM
    app = webapp.make_app(svc)           # a Flask app: GET /, GET /api/model, POST /api/predict

webapp.py (the Service and the Flask app), webpage.py (the page it serves).
"""
