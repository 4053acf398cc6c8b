"""The /docs page works offline and serves nothing of swagger-ui's dist but what it loads."""

from __future__ import annotations

import re

from tests.conftest import ClientFactory


async def test_docs_page_loads_only_local_assets_that_are_served(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    page = await client.get("/docs")
    assert page.status == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', await page.text())
    assert sources and all(s.startswith("/docs/static/") for s in sources)
    for source in sources:
        asset = await client.get(source)
        assert asset.status == 200, source
        assert len(await asset.read()) > 0


async def test_the_rest_of_the_swagger_ui_dist_is_not_served(make_client: ClientFactory) -> None:
    client = await make_client()
    for name in (
        "index.html",  # fetches a sample spec from the internet
        "swagger-initializer.js",
        "oauth2-redirect.html",
        "swagger-ui-bundle.js.map",
        "swagger-ui-es-bundle.js",
        "",
    ):
        resp = await client.get(f"/docs/static/{name}")
        assert resp.status == 404, name
