"""The worker's listening socket: connections asyncio accepts on it send without Nagle's delay.

Without TCP_NODELAY on an accepted socket, a response written as headers then body waits for the
client's delayed ACK of the headers (40 ms on Linux): every dispatch paid it."""

from __future__ import annotations

import asyncio
import socket

from kubesky_worker.main import _bind


def test_accepted_connections_have_tcp_nodelay():
    async def check() -> int:
        listener = _bind("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        try:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(seen, 5)
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(check()) != 0
