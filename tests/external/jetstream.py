"""Reads the relay's Jetstream (/subscribe) from Python for one past window [T0, T1] (replayed
from the relay's log, so the window is complete): with atproto_jetstream (a published client,
filtered to likes, uncompressed) and with aiohttp + zstandard (compress=true, decoded with the v1
dictionary, filtered here). Both must hold exactly the same events, and some likes.

atproto_jetstream 0.2.0 only speaks wss://, so a TLS front on 127.0.0.1 (self-signed, trusted via
SSL_CERT_FILE) forwards to the relay's plain port.

Usage: jetstream.py RELAY_PORT DICTIONARY CERT KEY  -> one JSON line; exit 1 on a mismatch."""
import asyncio, json, ssl, sys, time

import aiohttp
import zstandard
from atproto_jetstream import Jetstream, JetstreamOptions

relay_port, dictionary, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
WANTED = "app.bsky.feed.like"


async def tls_front():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def pipe(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def handle(cr, cw):
        rr, rw = await asyncio.open_connection("127.0.0.1", relay_port)
        await asyncio.gather(pipe(cr, rw), pipe(rr, cw))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


def key_of(e):
    c = e.get("commit") or {}
    return (e["time_us"], e["kind"], e["did"], c.get("collection"), c.get("rkey"), c.get("cid"))


async def with_client(port, t0, t1):
    got = []
    opts = JetstreamOptions(wanted_collections=[WANTED], cursor=t0)
    async with Jetstream(f"localhost:{port}", opts) as stream:
        async for e in stream:
            if e.time_us > t1:
                break
            d = e._asdict()
            if e.kind == "commit":
                d["commit"] = e.commit._asdict()
            got.append(d)
    return got


async def compressed(t0, t1):
    dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(open(dictionary, "rb").read()))
    got, frames = [], 0
    url = f"ws://127.0.0.1:{relay_port}/subscribe?compress=true&cursor={t0}"
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        async for m in ws:
            if m.type != aiohttp.WSMsgType.BINARY:
                continue
            frames += 1
            e = json.loads(dctx.decompress(m.data))
            if e["time_us"] > t1:
                break
            if e["kind"] != "commit" or e["commit"]["collection"] == WANTED:
                got.append(e)
    return got, frames


async def main():
    now = int(time.time() * 1_000_000)
    t0, t1 = now - 15_000_000, now - 2_000_000
    server, port = await tls_front()
    a = await asyncio.wait_for(with_client(port, t0, t1), 60)
    b, frames = await asyncio.wait_for(compressed(t0, t1), 60)
    server.close()
    counts = {}
    for e in a:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    same = [key_of(e) for e in a] == [key_of(e) for e in b]
    likes = sum(1 for e in a if e["kind"] == "commit")
    print(json.dumps({"client": "atproto_jetstream 0.2.0", "window_s": 13, "counts": counts,
                      "compressed_frames": frames, "same_events_compressed": same}))
    sys.exit(0 if same and likes > 0 and all(
        e["kind"] != "commit" or e["commit"]["collection"] == WANTED for e in a) else 1)


asyncio.run(main())
