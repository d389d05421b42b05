"""Engines that fail on purpose inside their own process, for the isolation tests (never used by product code)."""

from __future__ import annotations

import os
import signal
import time

from crossval.llama_cpp_backend import LlamaCppBackend

CRASH_ON = "q8_0"  # model files whose name contains this crash during decode


class CrashingLlama(LlamaCppBackend):
    """llama.cpp that raises SIGSEGV inside llama_decode (from its eval callback) on the first one-token decode step
    after a prefill, for models whose file name contains CRASH_ON; every other model runs normally."""

    def __init__(self, path, **kwargs):
        self.crash = CRASH_ON in os.path.basename(str(path))
        self.armed = False
        super().__init__(path, **kwargs)

    def _decode(self, tokens, pos0, all_logits):
        self.armed = self.crash and pos0 > 0 and len(tokens) == 1
        return super()._decode(tokens, pos0, all_logits)

    def _callback(self, t, ask, user_data):
        if self.armed:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super()._callback(t, ask, user_data)


class Misbehaving:
    """A plain object whose methods print, then hang, abort or raise."""

    def __init__(self, greeting: str = "ready"):
        print(greeting, flush=True)

    def echo(self, value):
        return value

    def hang(self, seconds: float) -> None:
        time.sleep(seconds)

    def abort(self, last_words: str) -> None:
        print(last_words, flush=True)
        os.abort()

    def fail(self) -> None:
        raise ValueError("bad value 42")
