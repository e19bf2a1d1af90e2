"""A man in the middle between a Client and a real kernel, to inject bad frames on any channel.

::

    Client ──shell/control/hb (DEALER)──▶ proxy front (DEALER) ─▶ proxy back (DEALER) ──▶ kernel
           ◀──────────────────────────────                     ◀─────────────────────────
    Client ◀──iopub (SUB)──────────────── proxy front (PUB)   ◀─ proxy back (SUB) ◀────── kernel

Every message the kernel sends is forwarded unchanged and remembered (``proxy.received``), so a
test can replay a genuine one; :meth:`TamperingProxy.inject` sends any frames to the client on
one channel.  The proxy runs its own thread and zmq context: it stands for another process.
"""

import queue
import threading

import zmq

CHANNELS = ("shell", "iopub", "control", "hb")


class TamperingProxy:
    """Forwards the four channels of one kernel; ``info`` is what a Client connects to.

    Parameters
    ----------
    kernel_info : dict
        The real kernel's connection info.
    """

    def __init__(self, kernel_info: dict):
        self.context = zmq.Context()
        self.front, self.back = {}, {}
        for ch in CHANNELS:
            front = self.context.socket(zmq.PUB if ch == "iopub" else zmq.DEALER)
            front.linger = 0
            front.bind("tcp://127.0.0.1:0")
            back = self.context.socket(zmq.SUB if ch == "iopub" else zmq.DEALER)
            back.linger = 0
            if ch == "iopub":
                back.setsockopt(zmq.SUBSCRIBE, b"")
            back.connect(f"tcp://{kernel_info['ip']}:{kernel_info[ch + '_port']}")
            self.front[ch], self.back[ch] = front, back
        self.info = dict(kernel_info, ip="127.0.0.1", transport="tcp",
                         **{f"{ch}_port": int(self.front[ch].last_endpoint.rsplit(b":", 1)[1])
                            for ch in CHANNELS})
        self.received = {ch: [] for ch in CHANNELS}  # frames the kernel sent, per channel
        self.forward_heartbeats = True
        self._commands: queue.Queue = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tampering-proxy", daemon=True)
        self._thread.start()

    def inject(self, channel: str, frames, timeout: float = 5.0) -> None:
        """Send ``frames`` (a list of bytes) to the client on ``channel``; returns once sent."""
        done = threading.Event()
        self._commands.put((channel, [bytes(f) for f in frames], done))
        if not done.wait(timeout):
            raise TimeoutError(f"the proxy did not inject on {channel} within {timeout} s")

    def request_on_kernel(self, channel: str, frames) -> None:
        """Send ``frames`` to the kernel ourselves; its reply goes to the client (and ``received``)."""
        done = threading.Event()
        self._commands.put((("kernel", channel), [bytes(f) for f in frames], done))
        done.wait(5.0)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5.0)
        self.context.destroy(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        ends = {}
        for ch in CHANNELS:
            if ch != "iopub":
                poller.register(self.front[ch], zmq.POLLIN)
                ends[self.front[ch]] = (ch, self.back[ch], False)
            poller.register(self.back[ch], zmq.POLLIN)
            ends[self.back[ch]] = (ch, self.front[ch], True)
        while not self._stop:
            while not self._commands.empty():
                where, frames, done = self._commands.get()
                if isinstance(where, tuple):
                    self.back[where[1]].send_multipart(frames)
                else:
                    self.front[where].send_multipart(frames)
                done.set()
            for sock, _ in poller.poll(5):
                channel, other, from_kernel = ends[sock]
                frames = sock.recv_multipart()
                if from_kernel:
                    self.received[channel].append(frames)
                    if channel == "hb" and not self.forward_heartbeats:
                        continue
                try:
                    # Never block: a stopped kernel must not keep the proxy from closing.
                    other.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
