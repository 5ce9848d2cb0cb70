"""The HTTP front of `vimdeploy serve`: a request body over the limit is refused before anyone reads it.

Triton 2.51 (the nvidia-pytriton 0.7 binary) has no limit on an HTTP request body: its
`tritonserver --help` lists no such option, and it reads and parses a JSON body of any size
(a 100 MB one was parsed). So the public HTTP port is this gate's, and tritonserver's HTTP
listens on a loopback port of its own. On each connection the client's requests are framed
by their Content-Length and forwarded byte for byte; one whose Content-Length is over the
limit is answered 413 before its body is read, one without a Content-Length (a chunked body)
411, and that connection is closed. Answers travel back unparsed.

A client that pipelines (sends a request before the previous answer came) and then sends one
over the limit may see the 413 among the bytes of earlier answers; no Triton client pipelines.
"""

from __future__ import annotations

import asyncio
import json
import threading

#: the longest request line and headers accepted (Triton's clients send a few hundred bytes)
MAX_HEAD_BYTES = 64 * 1024
#: after a refusal, how long the rest of a body the client already sends is read and dropped,
#: so that it reads the answer instead of a connection reset
LINGER_S = 2.0
#: how long answers still go back to a client that closed its sending side
ANSWER_TIMEOUT_S = 120.0


class Gate:
    """Listens on host:port in a thread of its own; forwards to 127.0.0.1:upstream_port."""

    def __init__(self, host: str, port: int, upstream_port: int, max_body: int):
        self.host, self.port, self.upstream_port, self.max_body = host, port, upstream_port, max_body
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vimdeploy-http-gate", daemon=True)

    def start(self) -> None:
        """Bind and serve; an OSError (port in use) is raised here."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD_BYTES), self._loop
        ).result(30)

    def stop(self) -> None:
        async def close():
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        upstream, relay = None, None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:  # the client is done sending: its answers still go back
                    if upstream is not None:
                        upstream.write_eof()
                        await asyncio.wait({relay}, timeout=ANSWER_TIMEOUT_S)
                    return
                except asyncio.LimitOverrunError:
                    return await _refuse(
                        reader,
                        writer,
                        431,
                        "Request Header Fields Too Large",
                        f"request headers over {MAX_HEAD_BYTES} bytes",
                    )
                length, problem = self._body_length(head)
                if problem is not None:
                    return await _refuse(reader, writer, *problem)
                if upstream is None:
                    upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    relay = asyncio.create_task(_relay(upstream_reader, writer))
                upstream.write(head)
                while length > 0:
                    chunk = await reader.read(min(length, 1 << 16))
                    if not chunk:
                        return
                    upstream.write(chunk)
                    length -= len(chunk)
                    await upstream.drain()
                await upstream.drain()
        except (ConnectionError, OSError):
            return
        finally:
            if relay is not None:
                relay.cancel()
            for w in (upstream, writer):
                if w is not None:
                    w.close()
            self._connections.discard(task)

    def _body_length(self, head: bytes) -> tuple[int, tuple | None]:
        """(Content-Length, None), or (0, (status, reason, message)) for a request to refuse."""
        lengths, chunked = set(), False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding" and value.strip().lower() != b"identity":
                chunked = True
        if chunked:
            return 0, (411, "Length Required", "send the request body with a Content-Length (no chunked encoding)")
        if not lengths:
            return 0, None
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            return 0, (400, "Bad Request", "the request has an invalid Content-Length")
        length = int(next(iter(lengths)))
        if length > self.max_body:
            return 0, (
                413,
                "Payload Too Large",
                f"the request body of {length} bytes is over this server's limit "
                f"of {self.max_body} bytes (vimdeploy serve --max-request-bytes)",
            )
        return length, None


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Triton's answers to the client, as they come; the client's connection closes with Triton's."""
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str, message: str
) -> None:
    """Answer `status` in Triton's error format and close, reading (not keeping) what the client still sends."""
    body = json.dumps({"error": message}).encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
    try:
        await writer.drain()
        writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while loop.time() < deadline and await asyncio.wait_for(reader.read(1 << 20), deadline - loop.time()):
            pass
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
