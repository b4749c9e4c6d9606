"""A console client over plain HTTP: the session cookie kept by hand (it is Secure, and the
test server is plain HTTP on loopback), the form token read from the pages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

import aiohttp

from tests.conftest import API_TOKEN

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class ConsoleClient:
    http: aiohttp.ClientSession
    base: str
    cookie: str | None = None
    set_cookie: SimpleCookie = field(default_factory=SimpleCookie)

    def headers(self, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.cookie is not None:
            headers["Cookie"] = self.cookie
        return headers

    async def get(self, path: str, **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(
            self.base + path, headers=self.headers(**headers), allow_redirects=False
        ) as response:
            return response.status, await response.text(), response

    async def post(
        self, path: str, data: dict[str, str], **headers: str
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        headers.setdefault("Origin", self.base)
        async with self.http.post(
            self.base + path, data=data, headers=self.headers(**headers), allow_redirects=False
        ) as response:
            return response.status, await response.text(), response

    async def log_in(self, token: str = API_TOKEN) -> int:
        status, _, response = await self.post("/console/login", {"token": token})
        if "Set-Cookie" in response.headers:
            self.set_cookie.load(response.headers["Set-Cookie"])
            morsel = self.set_cookie["callbridge_console"]
            self.cookie = f"callbridge_console={morsel.value}"
        return status

    async def csrf(self) -> str:
        status, body, _ = await self.get("/console")
        assert status == 200, body
        match = CSRF.search(body)
        assert match is not None
        return match[1]
