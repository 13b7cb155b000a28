"""`darkroom serve`: a read-only web view of the store — the overview (counts, queues, throughput,
problems, refreshed live), the gallery (thumbnails, filters, keyset pages), one photo's every result,
a JSON API with its OpenAPI document and a docs page, and Prometheus metrics.

- :mod:`darkroom.web.app`: the FastAPI application (:func:`create_app`), its pages, routes and
  security (the token, the Content-Security-Policy);
- :mod:`darkroom.web.reads`: what the pages and the API read from the ledger, each a few bounded
  statements through ``storage``;
- :mod:`darkroom.web.media`: the images, by sha256 only: thumbnails, previews of originals, artifacts;
- :mod:`darkroom.web.metrics`: ``/metrics``, read from the ledger at scrape time.

Templates and static files (CSS, the JavaScript of the live overview and of the docs page: no inline
script, nothing from a CDN) are in the package's ``templates/`` and ``static/``.
"""

from darkroom.web.app import create_app

__all__ = ["create_app"]
