"""The pipe on its own: plain asyncio protocols, no aiohttp, no routing."""

from __future__ import annotations

import asyncio
import random

from meshbridge._pipe import HIGH_WATER, LOW_WATER, MAX_BODY_PIECE, MAX_PIECE, Pipe, PipeStats


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received: list[bytes] = []
        self.lost: list[Exception | None] = []
        self.paused = False
        self.pauses = 0
        self.depth = 0
        self.max_depth = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        self.received.append(data)
        self.depth -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self.paused = False


def connected(stats: PipeStats | None = None) -> tuple[Pipe, Recorder, Recorder]:
    pipe = Pipe(asyncio.get_running_loop(), stats=stats)
    client, server = Recorder(), Recorder()
    pipe.connect(client, server)
    return pipe, client, server


async def test_write_is_delivered_at_once_and_in_order() -> None:
    pipe, client, server = connected()
    pipe.client.write(b"one")
    pipe.client.write(bytearray(b"two"))
    pipe.client.write(memoryview(b"three"))
    assert server.received == [b"one", b"two", b"three"]  # no loop turn needed
    assert all(type(chunk) is bytes for chunk in server.received)
    pipe.server.write(b"back")
    assert client.received == [b"back"]


async def test_paused_reader_holds_back_the_writer() -> None:
    stats = PipeStats()
    pipe, client, server = connected(stats)
    pipe.server.pause_reading()
    chunk = b"x" * 16384
    writes = 0
    while not client.paused:
        pipe.client.write(chunk)
        writes += 1
    assert server.received == []
    assert pipe.buffered == writes * len(chunk) > HIGH_WATER
    assert stats.peak == pipe.buffered
    pipe.server.resume_reading()
    assert server.received == []  # delivery happens from the loop, not inside resume_reading
    await asyncio.sleep(0)
    assert b"".join(server.received) == chunk * writes
    assert (client.paused, pipe.buffered, stats.buffered) == (False, 0, 0)


async def test_resume_writing_waits_for_low_water() -> None:
    pipe, client, _server = connected()

    class PausingReader(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None
            self.transport.pause_reading()  # one chunk per resume

    reader = PausingReader()
    pipe.server.set_protocol(reader)
    reader.connection_made(pipe.server)
    pipe.server.pause_reading()
    for _ in range(8):
        pipe.client.write(b"y" * 16384)
    assert client.paused
    while pipe.buffered > LOW_WATER:
        assert client.paused
        pipe.server.resume_reading()
        await asyncio.sleep(0)
    assert not client.paused


async def test_no_reentrant_delivery() -> None:
    pipe, _client, _server = connected()

    class Echo(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if data == b"ping":
                assert self.transport is not None
                self.transport.write(b"pong")

    class Pinger(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if data == b"pong":
                assert self.transport is not None
                self.transport.write(b"ping-again")

    echo, pinger = Echo(), Pinger()
    for end, protocol in ((pipe.server, echo), (pipe.client, pinger)):
        end.set_protocol(protocol)
        protocol.connection_made(end)
    pipe.client.write(b"ping")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert echo.received == [b"ping", b"ping-again"]
    assert pinger.received == [b"pong"]
    assert echo.max_depth == 1
    assert pinger.max_depth == 1


async def test_close_delivers_what_was_queued_then_loses_both() -> None:
    pipe, client, server = connected()
    pipe.client.pause_reading()
    pipe.server.write(b"last words")
    pipe.server.close()
    assert pipe.server.is_closing()
    await asyncio.sleep(0)
    assert client.lost == []
    assert server.lost == []
    pipe.client.resume_reading()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert client.received == [b"last words"]
    assert client.lost == [None]
    assert server.lost == [None]


async def test_abort_drops_queue_and_resets_the_peer() -> None:
    pipe, client, server = connected()
    pipe.server.pause_reading()
    pipe.client.write(b"never read")
    pipe.client.abort()
    await asyncio.sleep(0)
    assert server.received == []
    assert client.lost == [None]
    assert len(server.lost) == 1
    assert isinstance(server.lost[0], ConnectionResetError)
    assert pipe.buffered == 0
    pipe.client.write(b"after close")  # dropped, like a socket whose connection is gone
    assert server.received == []


async def test_on_close_names_the_error_the_peer_sees() -> None:
    seen: list[bool] = []

    def on_close(by_client: bool) -> Exception | None:
        seen.append(by_client)
        return RuntimeError("cut short")

    pipe = Pipe(asyncio.get_running_loop(), on_close=on_close)
    client, server = Recorder(), Recorder()
    pipe.connect(client, server)
    pipe.server.close()
    await asyncio.sleep(0)
    assert seen == [False]
    assert server.lost == [None]
    assert isinstance(client.lost[0], RuntimeError)


async def test_when_flushed_waits_for_delivery() -> None:
    pipe, _client, _server = connected()
    calls: list[str] = []
    pipe.server.when_flushed(lambda: calls.append("now"))
    assert calls == ["now"]
    pipe.client.pause_reading()
    pipe.server.write(b"body")
    pipe.server.when_flushed(lambda: calls.append("later"))
    assert calls == ["now"]
    pipe.client.resume_reading()
    await asyncio.sleep(0)
    assert calls == ["now", "later"]


async def test_a_failing_protocol_does_not_unwind_into_the_writer() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        pipe, client, _server = connected()

        class Broken(Recorder):
            def data_received(self, data: bytes) -> None:
                raise ValueError("parser bug")

        broken = Broken()
        pipe.server.set_protocol(broken)
        broken.connection_made(pipe.server)
        pipe.client.write(b"boom")  # must not raise here
        await asyncio.sleep(0)
        assert isinstance(errors[0]["exception"], ValueError)
        assert pipe.closed
        assert isinstance(client.lost[0], ConnectionResetError)
    finally:
        loop.set_exception_handler(None)


async def test_extra_info_and_limits() -> None:
    pipe = Pipe(asyncio.get_running_loop(), client_extra={"peername": ("openai", 80)})
    assert pipe.client.get_extra_info("peername") == ("openai", 80)
    assert pipe.client.get_extra_info("socket") is None
    pipe.client.set_write_buffer_limits(high=1000)
    assert pipe.client.get_write_buffer_limits() == (250, 1000)
    assert not pipe.client.can_write_eof()


async def test_random_interleavings_keep_order_and_bounds() -> None:
    # Rules 1 and 3 under many schedules: a writer that honours pause_writing,
    # a reader that pauses and resumes at random, loop turns in between.
    for seed in range(40):
        rng = random.Random(seed)
        stats = PipeStats()
        pipe, client, server = connected(stats)
        sent = bytearray()
        biggest = 0
        for step in range(300):
            action = rng.random()
            if action < 0.55 and not client.paused:
                chunk = bytes([step % 256]) * rng.randint(1, 40_000)
                biggest = max(biggest, len(chunk))
                pipe.client.write(chunk)
                sent += chunk
            elif action < 0.7:
                pipe.server.pause_reading()
            elif action < 0.85:
                pipe.server.resume_reading()
            else:
                await asyncio.sleep(0)
            assert stats.buffered == pipe.buffered <= HIGH_WATER + biggest
        pipe.server.resume_reading()
        for _ in range(1000):
            if not pipe.buffered:
                break
            await asyncio.sleep(0)
        assert b"".join(server.received) == bytes(sent), seed
        assert (client.paused, pipe.buffered) == (False, 0), seed
        assert server.max_depth == 1, seed  # never re-entered


class Receiver:
    """A receiver (Rule 6): keeps each piece and says what room it has."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.pieces: list[bytes] = []

    def take(self, data: bytes) -> None:
        self.pieces.append(data)

    def room_now(self) -> int:
        return self.room


async def test_a_receiver_gets_pieces_as_large_as_its_room_one_per_turn() -> None:
    pipe, _client, server = connected()
    receiver = Receiver(room=300_000)
    pipe.server.set_receiver(receiver.take, receiver.room_now)
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    pipe.client.write(body)
    assert [len(p) for p in receiver.pieces] == [300_000 + MAX_PIECE]  # at once, then paced
    receiver.room = 10 * MAX_BODY_PIECE  # a reader that wants everything
    turns = 0
    while pipe.buffered:
        await asyncio.sleep(0)
        turns += 1
    assert max(len(p) for p in receiver.pieces[1:]) == MAX_BODY_PIECE  # a copy: bounded
    assert turns == len(receiver.pieces) - 1  # one piece per turn of the loop
    assert b"".join(receiver.pieces) == body
    assert server.received == []  # all of it went to the receiver


async def test_a_write_within_a_receivers_room_goes_whole_however_large() -> None:
    pipe, _client, _server = connected()
    receiver = Receiver(room=64 * MAX_BODY_PIECE)  # a reader that asked for it (read())
    pipe.server.set_receiver(receiver.take, receiver.room_now)
    body = bytes(16 * MAX_BODY_PIECE)
    pipe.client.write(body)
    assert len(receiver.pieces) == 1  # no cut
    assert receiver.pieces[0] is body  # no copy


async def test_a_write_that_fits_a_receiver_is_handed_over_by_reference() -> None:
    pipe, _client, server = connected()
    receiver = Receiver(room=MAX_BODY_PIECE)
    pipe.server.set_receiver(receiver.take, receiver.room_now)
    body = b"z" * (MAX_PIECE * 3)
    pipe.client.write(body)
    assert receiver.pieces[0] is body  # no copy
    pipe.server.set_receiver(None)
    pipe.client.write(body)
    assert [len(p) for p in server.received] == [MAX_PIECE] * 3  # data_received's own pieces
    assert len(receiver.pieces) == 1


async def test_a_write_of_up_to_a_body_piece_past_a_receivers_room_goes_whole() -> None:
    # A reader's StreamReader holds a reference either way: cutting it would
    # only copy it (and the reader's read() would join the copies again).
    pipe, _client, _server = connected()
    receiver = Receiver(room=1000)
    pipe.server.set_receiver(receiver.take, receiver.room_now)
    body = bytes(MAX_PIECE + 1000 + MAX_BODY_PIECE)  # its turn and a body piece more
    pipe.client.write(body)
    assert receiver.pieces == [body]
    assert receiver.pieces[0] is body
    pipe.server.pause_reading()  # queued while the reader is full
    second, third = bytes(MAX_BODY_PIECE), bytes(MAX_BODY_PIECE)
    pipe.client.write(second)
    pipe.client.write(third)
    pipe.server.resume_reading()
    await asyncio.sleep(0)
    assert len(receiver.pieces) == 2  # one per turn
    assert receiver.pieces[1] is second
    await asyncio.sleep(0)
    assert receiver.pieces[2] is third
    larger = bytes(len(body) + 1)
    pipe.client.write(larger)
    for _ in range(3):  # three turns
        await asyncio.sleep(0)
    turn = MAX_PIECE + 1000
    # Past that: cut to its turn, until what is left goes in one copy.
    assert [len(p) for p in receiver.pieces[3:]] == [turn, turn, MAX_BODY_PIECE + 1 - turn]
    assert b"".join(receiver.pieces[3:]) == larger


async def test_receivers_keep_order_and_bounds_under_random_interleavings() -> None:
    # Rules 1, 3, 4 and 6 while a receiver comes and goes with a room that
    # changes, as an HTTP protocol's does from one body to the next.
    for seed in range(20):
        rng = random.Random(seed)
        stats = PipeStats()
        pipe, client, server = connected(stats)
        receiver = Receiver(room=0)
        sent = bytearray()
        got: list[bytes] = []
        seen = 0
        written: set[int] = set()
        kept: list[bytes] = []
        for step in range(200):
            action = rng.random()
            if action < 0.4 and not client.paused:
                chunk = bytes([step % 256]) * rng.randint(1, 2 * MAX_BODY_PIECE)
                pipe.client.write(chunk)
                sent += chunk
                written.add(id(chunk))
                kept.append(chunk)  # ids stay unique while it lives
            elif action < 0.5:
                got += server.received[seen:] + receiver.pieces
                seen, receiver.pieces = len(server.received), []
                receiver.room = rng.choice([0, 1000, 200_000, 10 * MAX_BODY_PIECE])
                on = rng.random() < 0.6
                pipe.server.set_receiver(receiver.take if on else None, receiver.room_now)
            elif action < 0.6:
                pipe.server.pause_reading()
            elif action < 0.75:
                pipe.server.resume_reading()
            else:
                await asyncio.sleep(0)
            # A piece within its turn (room + MAX_PIECE), or what is left of
            # a cut write (at most MAX_BODY_PIECE), or a whole write of up to
            # MAX_BODY_PIECE more; a copy cut from a write at most
            # MAX_BODY_PIECE, a larger one a whole write.
            turn = MAX_PIECE + receiver.room
            assert all(
                len(p) <= max(turn, MAX_BODY_PIECE)
                or (len(p) <= turn + MAX_BODY_PIECE and id(p) in written)
                for p in receiver.pieces
            ), seed
            assert all(len(p) <= MAX_BODY_PIECE or id(p) in written for p in receiver.pieces), seed
            assert all(len(p) <= MAX_PIECE for p in server.received[seen:]), seed
            assert stats.buffered == pipe.buffered
        pipe.server.resume_reading()
        for _ in range(10_000):
            if not pipe.buffered:
                break
            await asyncio.sleep(0)
        got += server.received[seen:] + receiver.pieces
        assert b"".join(got) == bytes(sent), seed
        assert (client.paused, pipe.buffered) == (False, 0), seed
