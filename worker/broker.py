"""Darkroom's own Redis client, and Celery's broker options: one place that understands both kinds
of ``DARKROOM_BROKER_URL``.

- ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``): one Redis;
- ``sentinel://host1:26379;sentinel://host2:26379`` (kombu's syntax; the first part may carry the
  master's ``user:password@`` and ``/db``): Redis Sentinel, with the master's name in
  ``DARKROOM_SENTINEL_MASTER``. The client asks the sentinels where the master is, and asks again
  after a failover (redis-py's ``SentinelConnectionPool``).

Every Redis connection of the producer, the CLI and the workers is made here (:func:`connect`);
Celery's own is configured by :func:`transport_options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.redis import SentinelChannel
from kombu.transport.redis import SentinelTransport as KombuSentinelTransport
from redis.sentinel import Sentinel

from darkroom.settings import Settings, sentinel_hosts

#: Socket options that also apply to the connections to the sentinels themselves.
_SENTINEL_SOCKET_OPTIONS = ("socket_timeout", "socket_connect_timeout", "socket_keepalive")


class _SentinelChannel(SentinelChannel):
    """kombu's Sentinel channel, but one whose connection was closed under it says so with a
    connection error. When the master dies, Celery closes the broker connection; closing its channel
    gives the unacknowledged messages back, which needs a new pool, made from the connection's
    parameters — gone by then, so kombu 5.7 raises AttributeError, which Celery takes for an
    unrecoverable error and stops the worker (it exits 0). A connection error is what Celery expects
    there: it reconnects through the sentinels. The messages stay in Redis's unacked set (restored
    after the visibility timeout); their runs are taken over by the reconciler once their holders
    are gone (Celery stops the tasks it can no longer acknowledge)."""

    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed (a failover?)")
        return super()._connparams(asynchronous)


class SentinelTransport(KombuSentinelTransport):
    """The transport of ``sentinel://`` broker URLs in Darkroom's processes (see :class:`_SentinelChannel`)."""

    Channel = _SentinelChannel


# Every sentinel:// connection kombu makes in this process, including after Celery switches to the
# URL's next sentinel (which resolves the scheme again), uses the transport above.
TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"


def is_sentinel(url: str) -> bool:
    return sentinel_hosts(url) is not None


def connect(url: str, *, master_name: str = "mymaster", **kwargs: Any) -> redis.Redis:
    """A Redis client for ``url``: a plain one, or the current master of ``master_name`` found through
    the sentinels of a ``sentinel://`` URL list. ``kwargs`` go to the connections (timeouts...)."""
    hosts = sentinel_hosts(url)
    if hosts is None:
        return redis.Redis.from_url(url, **kwargs)
    first = urlsplit(url.split(";")[0].strip())
    db = int(first.path.strip("/") or 0)
    sentinel = Sentinel(hosts, sentinel_kwargs={k: v for k, v in kwargs.items() if k in _SENTINEL_SOCKET_OPTIONS},
                        **kwargs)
    auth = {}
    if first.username:
        auth["username"] = unquote(first.username)
    if first.password:
        auth["password"] = unquote(first.password)
    return sentinel.master_for(master_name, db=db, **auth)


def for_settings(settings: Settings, **kwargs: Any) -> redis.Redis:
    """:func:`connect` for the settings' broker URL and sentinel master."""
    return connect(settings.redis_url, master_name=settings.sentinel_master, **kwargs)


def transport_options(settings: Settings) -> dict[str, Any]:
    """Celery's ``broker_transport_options``: the visibility timeout, and the master's name with a
    sentinel URL (kombu's Sentinel transport needs it)."""
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if is_sentinel(settings.redis_url):
        options["master_name"] = settings.sentinel_master
    return options


@dataclass(frozen=True)
class Master:
    """Which Redis answers as the master now: its replication id (a new one after a failover, or after
    a restart that did not load it back) and its address (for the log)."""

    replid: str
    address: str


def master(client: redis.Redis) -> Master:
    """The master ``client`` reaches now (one ``INFO replication``)."""
    info = client.info("replication")
    pool = client.connection_pool
    if hasattr(pool, "get_master_address"):  # through the sentinels: where they say the master is
        host, port = pool.get_master_address()
    else:
        host, port = pool.connection_kwargs.get("host") or pool.connection_kwargs.get("path"), \
            pool.connection_kwargs.get("port", "")
    return Master(replid=str(info.get("master_replid", "")), address=f"{host}:{port}" if port else str(host))
